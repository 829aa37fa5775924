"""`publish.eval.parallel`: the GPU layout is a pure function of the setting and the machine."""

from __future__ import annotations

import pytest
from conftest import TINY_SLERP

from publisher.parallel import EvalParallelism, ParallelError, choose_parallelism

GB = 1024**3


def test_cpu_and_one_gpu_need_nothing() -> None:
    assert choose_parallelism("auto", 0) == EvalParallelism()
    one = choose_parallelism("auto", 1, model_bytes=14 * GB, gpu_memory_bytes=24 * GB)
    assert one == EvalParallelism(gpus=1, tensor_parallel=1, data_parallel=1)
    assert one.model_args("vllm") == {} and one.processes("hf") == 1


def test_a_7b_on_four_gpus_is_four_copies() -> None:
    layout = choose_parallelism("auto", 4, model_bytes=14 * GB, gpu_memory_bytes=24 * GB)
    assert (layout.tensor_parallel, layout.data_parallel) == (1, 4)
    assert layout.model_args("vllm") == {"tensor_parallel_size": 1, "data_parallel_size": 4}
    assert layout.model_args("hf") == {} and layout.processes("hf") == 4


def test_a_70b_is_split_over_the_fewest_gpus_that_hold_it() -> None:
    # 141 GB of bf16 weights on 8 x L40S (48 GB): 4 GPUs hold a copy (with headroom), 2 copies.
    layout = choose_parallelism(
        "auto", 8, model_bytes=141 * GB, gpu_memory_bytes=48 * GB, attention_heads=64
    )
    assert (layout.tensor_parallel, layout.data_parallel) == (4, 2)
    assert layout.model_args("vllm") == {"tensor_parallel_size": 4, "data_parallel_size": 2}
    assert layout.model_args("hf") == {"parallelize": True} and layout.processes("hf") == 2
    # On 4 of them it takes all 4 for one copy.
    four = choose_parallelism("auto", 4, model_bytes=141 * GB, gpu_memory_bytes=48 * GB)
    assert (four.tensor_parallel, four.data_parallel) == (4, 1)


def test_heads_must_divide_and_too_big_spreads_the_most() -> None:
    # 3 GPUs, 32 heads: 3 does not divide 32, so a copy cannot span 3; one copy per GPU.
    assert choose_parallelism("auto", 3, attention_heads=32).tensor_parallel == 1
    huge = choose_parallelism("auto", 2, model_bytes=400 * GB, gpu_memory_bytes=80 * GB)
    assert (huge.tensor_parallel, huge.data_parallel) == (2, 1)


def test_an_explicit_count() -> None:
    layout = choose_parallelism(2, 8, model_bytes=14 * GB, gpu_memory_bytes=24 * GB)
    assert (layout.gpus, layout.tensor_parallel, layout.data_parallel) == (2, 1, 2)
    with pytest.raises(ParallelError, match="has 2 GPU"):
        choose_parallelism(4, 2)
    assert choose_parallelism(4, 0) == EvalParallelism()  # CPU: the setting has nothing to use


def test_the_recipe_field(write_recipe) -> None:
    from publisher.recipe import RecipeError, load_recipe

    body = TINY_SLERP + "dtype: float32\npublish:\n  eval:\n    parallel: PARALLEL\n"
    assert (
        load_recipe(write_recipe(body.replace("PARALLEL", "auto"))).publish.eval.parallel == "auto"
    )
    assert load_recipe(write_recipe(body.replace("PARALLEL", "4"))).publish.eval.parallel == 4
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(body.replace("PARALLEL", "0")))
    assert "parallel" in str(err.value.problems[0])
