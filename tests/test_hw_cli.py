"""`hssim measure`: same output shape as `hssim run`, clear errors."""

import json

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from hssim.cli import main as hssim_main  # noqa: E402
from hssim.cli.measure import measure  # noqa: E402

SCENARIO = """
name: tiny-measure
model: {name: opt-tiny, layers: 4, hidden: 64, heads: 4, kv_heads: 4, ffn: 256, vocab: 128, max_positions: 64}
hardware: a100-40gb-pcie4
workload: {batch: 4, prompt_len: 8, gen_len: 3}
policy_defaults: {num_gpu_batches: 2}
policies:
  - {kind: kv-only}
  - {kind: hybrid, kv_ratio: 0.5}
"""


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SCENARIO)
    return str(path)


def test_json_output_has_the_shape_of_hssim_run(scenario, tmp_path):
    runner = CliRunner()
    timeline = tmp_path / "tl.csv"
    got = runner.invoke(measure, [scenario, "--policy", "hybrid", "--device", "cpu", "--json", "--repeats", "1",
                                  "--warmup", "0", "--timeline", str(timeline)])
    assert got.exit_code == 0, got.output
    measured = json.loads(got.stdout)
    sim = runner.invoke(hssim_main, ["run", scenario, "--policy", "hybrid", "--json"])
    assert sim.exit_code == 0, sim.output
    simulated = json.loads(sim.output)
    assert set(simulated) <= set(measured)
    assert measured["executor"] == "hw-cpu" and simulated["executor"] == "sim"
    assert measured["ops"] == simulated["ops"] and measured["h2d_bytes"] == simulated["h2d_bytes"]
    assert measured["scaled"] is False and measured["layers_run"] == measured["model_layers"] == 4
    assert timeline.read_text().splitlines()[0].startswith("op_id,stream,kind")


def test_scaled_run_says_so(scenario):
    got = CliRunner().invoke(measure, [scenario, "--policy", "kv-only", "--layers", "2", "--json",
                                       "--repeats", "1", "--warmup", "0"])
    assert got.exit_code == 0, got.output
    out = json.loads(got.stdout)
    assert out["scaled"] is True and out["layers_run"] == 2 and out["model_layers"] == 4
    table = CliRunner().invoke(measure, [scenario, "--policy", "kv-only", "--layers", "2", "--repeats", "1"])
    assert table.exit_code == 0 and "first 2 of 4 layers" in " ".join(table.output.split())


def test_cuda_without_a_gpu_is_a_one_line_error(scenario):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    got = CliRunner().invoke(measure, [scenario, "--policy", "kv-only", "--device", "cuda"])
    assert got.exit_code == 2
    lines = got.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: no CUDA device")


def test_user_errors_are_one_line(scenario):
    got = CliRunner().invoke(measure, [scenario, "--policy", "kv-only", "--layers", "9"])
    assert got.exit_code == 2
    assert got.output.strip().splitlines() == ["error: --layers 9: the model has 4 layers; fix: use 1..4"]
    got = CliRunner().invoke(measure, [scenario])
    assert got.exit_code == 2 and "narrow to one with --policy" in got.output


def test_cpu_runs_fp16_models_in_bf16_and_reports_progress(tmp_path):
    path = tmp_path / "fp16.yaml"
    path.write_text(SCENARIO.replace("max_positions: 64}", "max_positions: 64, dtype: fp16}"))
    got = CliRunner().invoke(measure, [str(path), "--policy", "kv-only", "--json", "--repeats", "2", "--warmup", "1"])
    assert got.exit_code == 0, got.output
    out = json.loads(got.stdout)
    assert out["dtype"] == "bf16" and out["model_dtype"] == "fp16"
    assert out["host_memory_weights"] == out["host_memory_cache"] == "pageable"  # no pinning without CUDA
    assert "in bf16" in got.stderr and "warm-up 1 of 1" in got.stderr and "repeat 2 of 2" in got.stderr
    forced = CliRunner().invoke(measure, [str(path), "--policy", "kv-only", "--json", "--repeats", "1",
                                          "--warmup", "0", "--dtype", "fp32"])
    assert forced.exit_code == 0 and json.loads(forced.stdout)["dtype"] == "fp32"
