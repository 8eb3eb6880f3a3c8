"""benchmarks/gpu_check.sh, the one prepared run for a lent GPU, checked without one (its dry run):
its stage limits fit one device command (at most 600 s), every test it names for the sanitizers
exists, and the training commands it runs parse. A GPU session has minutes, not retries: a stage
that names a renamed test or a wrong flag would waste its run."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from gru4rec_ext.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_CALL_LIMIT_S = 600  # the device tool's most seconds for one command


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", OUT=str(out), GPU_CHECK_WORK=str(out / "work"))
    run = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    found = re.findall(r"^== (\S+) \(limit (\d+) s, at \d+ s\): (.*)$", run.stdout, flags=re.M)
    assert len(found) >= 10, run.stdout
    return [(name, int(limit), cmd) for name, limit, cmd in found]


def test_stage_limits_fit_one_device_command(stages):
    total = sum(limit for _, limit, _ in stages)
    assert total <= DEVICE_CALL_LIMIT_S - 10, f"the stages' limits sum to {total} s"


def test_named_tests_exist(stages):
    ids = sorted({tok for _, _, cmd in stages for tok in shlex.split(cmd) if tok.startswith("tests/") and "::" in tok})
    assert len(ids) >= 10
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    collected = [line for line in run.stdout.splitlines() if "::" in line]
    assert len(collected) == len(ids), (len(collected), len(ids))


def test_training_commands_parse(stages):
    commands = [shlex.split(cmd) for _, _, cmd in stages if "gru4rec_ext" in cmd and " train " in f" {cmd} "]
    assert len(commands) >= 2  # the whole rsc15_100k training on CUDA and the tiny one
    for argv in commands:
        argv = argv[argv.index("gru4rec_ext") + 1:]
        args = build_parser().parse_args(argv)
        assert args.device == "cuda"
