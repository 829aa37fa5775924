"""Merge auto-tuning: a pure choice from size, memory and device; explicit settings win."""

from __future__ import annotations

import pytest

from publisher.merge import tuned_merge_request
from publisher.merge_tuning import GB, MB, MergeFacts, choose_merge_options
from publisher.recipe import load_recipe

EXPLICIT = "set by the recipe or a flag"


def choose(**facts):
    return choose_merge_options(MergeFacts(**{"free_ram_bytes": 16 * GB, **facts})).options


@pytest.mark.parametrize(
    ("output_bytes", "shard"),
    [(3 * GB, 200 * MB), (20 * GB, 200 * MB), (140 * GB, 1_400_000_000), (2000 * GB, 5 * GB)],
)
def test_shard_size_is_small_until_there_would_be_too_many_shards(output_bytes, shard):
    assert choose(output_bytes=output_bytes)["out_shard_size"] == shard


def test_async_write_needs_a_spare_cpu_and_free_memory():
    roomy = choose(output_bytes=3 * GB, cpus=4)
    assert roomy["async_write"] is True and roomy["write_threads"] == 2
    assert choose(output_bytes=3 * GB, cpus=1)["async_write"] is False
    tight = choose(output_bytes=12 * GB, cpus=4, free_ram_bytes=2 * GB)
    assert tight["async_write"] is False and tight["write_threads"] == 1


def test_threads_follow_the_cpus_this_process_may_use_less_the_writers():
    # a background writer gets a CPU of its own (measured faster on 2 CPUs: bench/README.md)
    assert choose(output_bytes=GB, cpus=2)["num_threads"] == 1
    assert choose(output_bytes=GB, cpus=8)["num_threads"] == 6
    assert choose(output_bytes=GB, cpus=1)["num_threads"] == 1  # no async writes on one CPU
    tight = choose(output_bytes=12 * GB, cpus=4, free_ram_bytes=2 * GB)
    assert tight["async_write"] is False and tight["num_threads"] == 4
    facts = MergeFacts(output_bytes=GB, free_ram_bytes=16 * GB, cpus=4)
    assert choose_merge_options(facts, {"write_threads": 3}).options["num_threads"] == 1
    assert choose_merge_options(facts, {"async_write": False}).options["num_threads"] == 4


def test_half_precision_on_few_cpus_merges_on_every_cpu():
    # measured at 1.2B bf16 on 2 CPUs: no background writer, both CPUs merge (bench/README.md)
    half = choose(output_bytes=3 * GB, cpus=2, out_dtype="bfloat16")
    assert half["async_write"] is False and half["num_threads"] == 2
    assert choose(output_bytes=3 * GB, cpus=2, out_dtype="float16")["async_write"] is False
    assert choose(output_bytes=3 * GB, cpus=2, out_dtype="float32")["async_write"] is True
    many = choose(output_bytes=3 * GB, cpus=8, out_dtype="bfloat16")
    assert many["async_write"] is True and many["num_threads"] == 6
    gpu = choose(output_bytes=3 * GB, cpus=2, out_dtype="bfloat16", device="cuda")
    assert gpu["async_write"] is True


def test_lazy_unpickle_only_for_pickled_parents():
    assert choose(output_bytes=GB, pickled_parents=True)["lazy_unpickle"] is True
    assert choose(output_bytes=GB)["lazy_unpickle"] is False


def test_results_stay_on_the_gpu_only_when_it_holds_them():
    assert choose(output_bytes=GB, device="cuda", gpu_bytes=80 * GB)["low_cpu_memory"] is True
    assert choose(output_bytes=GB, device="cuda", gpu_bytes=GB)["low_cpu_memory"] is False
    assert choose(output_bytes=GB, device="cuda")["low_cpu_memory"] is False
    assert choose(output_bytes=GB, gpu_bytes=80 * GB)["low_cpu_memory"] is False


def test_explicit_settings_are_kept_with_their_reason():
    facts = MergeFacts(output_bytes=3 * GB, free_ram_bytes=16 * GB, cpus=4)
    explicit = {"out_shard_size": "5B", "async_write": False, "num_threads": 1}
    tuning = choose_merge_options(facts, explicit)
    assert {k: tuning.options[k] for k in explicit} == explicit
    assert all(tuning.reasons[k] == EXPLICIT for k in explicit)
    # write_threads follows the explicit async_write, not the free memory.
    assert tuning.options["write_threads"] == 1
    assert tuning.reasons["lazy_unpickle"] != EXPLICIT


def test_recipe_settings_win_and_the_rest_is_measured_from_the_parents(write_recipe, tiny_parents):
    path = write_recipe(
        """\
        slices:
          - sources:
              - {model: {base}, layer_range: [0, 4]}
              - {model: {other}, layer_range: [0, 4]}
        merge_method: slerp
        base_model: {base}
        parameters: {t: 0.5}
        dtype: bfloat16
        publish:
          merge: {out_shard_size: 1B, write_threads: 3}
        """
    )
    recipe = load_recipe(path)
    base, other = tiny_parents
    request, tuning = tuned_merge_request(recipe, {str(base): base, str(other): other})
    assert request.out_shard_size == "1B" and request.write_threads == 3
    assert tuning.reasons["out_shard_size"] == tuning.reasons["write_threads"] == EXPLICIT
    assert request.num_threads == tuning.facts["cpus"] >= 1
    # float32 parents merged into bfloat16: half their weight bytes.
    parent_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    assert tuning.facts["output_bytes"] == parent_bytes // 2


def test_parents_are_read_with_pread_only_when_mapped_they_would_not_fit():
    tight = {"output_bytes": 3 * GB, "parent_bytes": 12 * GB, "free_ram_bytes": 8 * GB}
    assert choose(**tight, pread_available=True)["parent_reads"] == "pread"
    assert choose(**tight)["parent_reads"] == "mmap"  # an older safetensors
    assert choose(**tight, pread_available=True, device="cuda")["parent_reads"] == "mmap"
    assert choose(**tight, pread_available=True, pickled_parents=True)["parent_reads"] == "mmap"
    roomy = {"output_bytes": 3 * GB, "parent_bytes": 6 * GB, "free_ram_bytes": 16 * GB}
    assert choose(**roomy, pread_available=True)["parent_reads"] == "mmap"  # measured faster


def test_the_hf_jobs_build_tunes_what_neither_the_recipe_nor_a_flag_sets(
    write_recipe, tiny_parents, tmp_path
):
    """`--on hf-jobs --write-threads 3` on a recipe with `out_shard_size`: the build job keeps
    those two and tunes the rest for its own hardware, as a local run does."""
    from publisher.jobbundle import Bundle
    from publisher.jobrun import SPEC_ENV, JobSpec, build_settings
    from publisher.jobs import _job_options
    from publisher.settings import Overrides

    recipe = load_recipe(
        write_recipe(
            "models: [{model: {base}}, {model: {other}}]\nmerge_method: slerp\n"
            "base_model: {base}\nparameters: {t: 0.5}\npublish:\n  merge: {out_shard_size: 1B}\n"
        )
    )
    bundle = Bundle(root=tmp_path, recipe="recipe.yaml", src=".", templates=None, digest="0")
    options = _job_options(Overrides(merge={"write_threads": 3}), bundle)
    sent = JobSpec(run_id="run", recipe="recipe.yaml", options=options).to_env()
    settings = build_settings(JobSpec.from_env({SPEC_ENV: sent}), recipe, tmp_path, "cpu")
    base, other = tiny_parents
    request, tuning = tuned_merge_request(
        recipe, {str(base): base, str(other): other}, settings=settings.merge
    )
    explicit = {name for name, why in tuning.reasons.items() if why == EXPLICIT}
    assert explicit == {"out_shard_size", "write_threads"}
    assert (request.out_shard_size, request.write_threads) == ("1B", 3)
