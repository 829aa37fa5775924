#!/usr/bin/env bash
# Compose the pull request's preview comment from the downloaded preview-* artifacts.
#
#   preview-comment.sh PREVIEWS_DIR > comment.md
#
# Each PREVIEWS_DIR/<recipe name>/ holds what one leg of the preview matrix made: plan.md (the
# t table from `publisher plan`), README.md and schedule.png (from `publisher card`), or
# failed.md when that recipe failed. HEAD_SHA and RUN_URL, when set, say which commit and run.
# `publisher comment` adds the hidden marker that finds this comment again.
set -euo pipefail

dir="${1:?usage: preview-comment.sh PREVIEWS_DIR}"

echo "## Recipe preview"
echo
if [ -n "${HEAD_SHA:-}" ]; then
  echo "For commit ${HEAD_SHA}.${RUN_URL:+ The cards and schedule images are in the artifacts of [this run](${RUN_URL}).}"
  echo
fi

shopt -s nullglob
found=0
for d in "$dir"/*/; do
  found=1
  name="$(basename "$d")"
  if [ -f "$d/failed.md" ]; then
    cat "$d/failed.md"
    echo
    continue
  fi
  if [ -f "$d/plan.md" ]; then
    cat "$d/plan.md"
    echo
  fi
  if [ -f "$d/README.md" ]; then
    echo "<details><summary>Model card preview: <code>${name}</code></summary>"
    echo
    # The card's YAML front matter as a code block (as markdown it would render as headings), and
    # the schedule image, which a comment cannot show from a relative path, as a pointer.
    awk '
      NR == 1 && $0 == "---" { print "```yaml"; front = 1; next }
      front && $0 == "---"   { print "```"; front = 0; next }
      /^!\[[^]]*\]\(schedule\.png\)/ { print "_(schedule image: `schedule.png` in the `preview-" name "` artifact)_"; next }
      { print }
    ' name="$name" "$d/README.md"
    echo
    echo "</details>"
    echo
  fi
done

if [ "$found" = 0 ]; then
  echo "No preview was produced; see the run's annotations and logs."
fi
