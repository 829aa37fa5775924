"""lm-evaluation-harness tasks shipped with publisher (YAML + data), e.g. `publisher_tiny_qa`."""
