"""The guides run: the ```bash blocks of README.md and of the guides in GUIDES, in order, as one path.

A newcomer follows the README, then a guide; so does this test. Every ```bash block of each file in
GUIDES is run, in the order written, in one scratch folder that plays the repository root (with
`../shared` next to it, as in a checkout), so each command's inputs must come from an earlier
command or be shipped. A guide that drifts from the code (a renamed flag, an input no step
makes) fails here.

Conventions for the guides:
* ```bash  — runs here, in order, on tiny settings.
* ```console or ```text — shown, never run: servers, GPUs, torchrun, hub downloads, interactive
  sessions, `make` targets, and variations that would only repeat a run with other inputs.

Tiny settings: the text of a command is rewritten, and only in these ways, to run in seconds:
`fornalha pipeline` gets a small slice of data and a one-layer model (its `--minutes` replaced);
`fornalha generate` gets `--max-new-tokens 8` where it names none. Other guides opt in by being
added to GUIDES (their blocks then run after those before them).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
GUIDES = ["README.md", "docs/inference.md"]

TINY_PIPELINE = (
    "--max-bytes 150000 --vocab-size 512 --minutes 1.4 --set model.n_layer=1 --set model.n_embd=32 "
    "--set model.n_head=2 --set model.block_size=64 --set train.batch_size=4 --set train.eval_batches=2 "
    "--set train.eval_interval=10"
)


def bash_blocks(text: str) -> list[str]:
    """The contents of the ```bash fences of a Markdown text, in order."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[str]:
    """A block's commands: one per line (with `\\` continuations joined), comments and blanks dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def tiny(command: str) -> str:
    """The command with the tiny settings the module docstring lists."""
    if command.startswith("fornalha pipeline"):
        command = re.sub(r"\s--minutes\s+\S+", "", command)
        code, sep, comment = command.partition("  #")
        return f"{code.rstrip()} {TINY_PIPELINE}{sep}{comment}"
    if command.startswith("fornalha generate") and "--max-new-tokens" not in command:
        code, sep, comment = command.partition("  #")
        redirect = re.search(r"\s[>|].*$", code)
        head = code[: redirect.start()] if redirect else code
        tail = redirect.group(0) if redirect else ""
        return f"{head.rstrip()} --max-new-tokens 8{tail}{sep}{comment}"
    return command


def test_block_extraction_and_rewrites():
    text = "```bash\nfornalha a \\\n  --b 1  # c\n# only a comment\n```\n```console\nfornalha serve\n```\n"
    assert [commands(b) for b in bash_blocks(text)] == [["fornalha a --b 1  # c"]]
    assert (
        tiny("fornalha generate --run r -p x > o.jsonl")
        == "fornalha generate --run r -p x --max-new-tokens 8 > o.jsonl"
    )
    assert "--minutes 1.4 " in tiny("fornalha pipeline --minutes 20 --out r") and "20" not in tiny(
        "fornalha pipeline --minutes 20 --out r"
    )


@pytest.mark.timeout(900)
def test_guides_run_in_order(tmp_path: Path):
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the guides read ../shared/data")
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        # the float16 decode kernel is compiled once per machine (~30 s) and has its own tests
        # (tests/infer/test_infer_kernels.py); here the engine uses its portable path
        "FORNALHA_NO_KERNELS": "1",
    }
    shim = f'fornalha() {{ {shlex.quote(sys.executable)} -m fornalha.cli "$@"; }}\n'
    ran = 0
    for guide in GUIDES:
        for block in bash_blocks((ROOT / guide).read_text(encoding="utf-8")):
            for command in commands(block):
                script = shim + "set -o pipefail\n" + tiny(command) + "\n"
                r = subprocess.run(
                    ["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=600
                )
                assert r.returncode == 0, f"{guide}: `{command}` failed ({r.returncode}):\n{r.stderr[-2000:]}"
                assert "Traceback" not in r.stderr, f"{guide}: `{command}`:\n{r.stderr[-2000:]}"
                ran += 1
    assert ran >= 8  # README's pipeline commands and the inference guide's examples
    assert (repo / "runs/demo/report.html").is_file()
    assert (repo / "outputs.jsonl").read_text().count("\n") == 2  # one JSON line out per prompt
    assert (repo / "chat.json").is_file()
