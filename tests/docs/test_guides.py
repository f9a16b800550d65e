"""The guides run: the ```bash blocks of README.md and of the guides in GUIDES, in order, as one path.

A newcomer follows the README, then the guides; so does this test. Every ```bash block of each file
in GUIDES is run, in the order written and in the order of GUIDES, in one scratch folder that plays
the repository root (with `../shared` next to it, as in a checkout), so each command's inputs must
come from an earlier command (of that guide or of a guide before it) or be shipped in
../shared/data. One test runs them all, in GUIDES order and in one process (a failure names its guide
and command). A guide that drifts from the code (a renamed flag, an input no step makes) fails here.

Conventions for the guides:
* ```bash  — runs here, in order, on tiny settings; one command a line (`\\` continues a line, a
  here-document is one command with its lines). Optional flags go in a trailing `# [--flag]`
  comment, never as `[--flag]` in the command itself.
* ```console or ```text — shown, never run: servers, GPUs, torchrun, hub downloads, other programs
  (llama.cpp, vLLM), interactive sessions, `make` targets, and variations that would only repeat a
  run with other inputs.

Tiny settings: the text of a command is rewritten, and only in these ways, to run in seconds:
* `fornalha pipeline` gets a small slice of data and a one-layer model (its `--minutes` replaced);
* `fornalha generate` gets `--max-new-tokens 8` where it names none;
* `fornalha data prepare` reads at most 200 kB per source (`--max-bytes`) where it names no limit,
  and uses 2 workers where it names more;
* `fornalha tokenizer train` trains on at most 200 kB (`--max-bytes`) where it names no limit;
* `fornalha train` and `fornalha sweep`, when they start a run (not a bare `--resume`), get a short
  context and batch, few steps and evaluations (TINY_TRAIN, after the guide's own `--set`s, so it
  wins), and any `--time-budget` becomes 0.1 minutes; a `--resume` gets a few more steps;
* `fornalha recommend prepare` keeps only users with 40 or more ratings (`--min-interactions 40`,
  ~300 users) where it names no threshold, and `fornalha recommend train` gets `--time-budget 0.1`;
* `fornalha eval` scores at most 20 examples per task and 4,096 tokens of `--data`.
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
# reading order: each guide may use what the ones before it made. Not here: docs/model.md and
# docs/config.md (nothing to run), docs/serve.md and docs/web.md (servers), docs/finetune.md & co. (their
# helpers' tests run them).
GUIDES = [
    "README.md",
    "docs/inference.md",
    "docs/data.md",
    "docs/tokenizer.md",
    "docs/train.md",
    "docs/training.md",
    "docs/eval.md",
    "docs/export.md",
    "docs/interop.md",
    "docs/recommend.md",
    "docs/data-engines.md",
    "docs/safety.md",
]

TINY_PIPELINE = (
    "--max-bytes 150000 --vocab-size 512 --minutes 1.4 --set model.n_layer=1 --set model.n_embd=32 "
    "--set model.n_head=2 --set model.block_size=64 --set train.batch_size=4 --set train.eval_batches=2 "
    "--set train.eval_interval=10"
)
TINY_TRAIN = (
    "--set train.max_steps=6 --set train.eval_interval=3 --set train.eval_batches=2 --set train.batch_size=4 "
    "--set model.block_size=64 --set train.samples=1 --set train.sample_tokens=8"
)
TINY_RESUME = "--set train.max_steps=8"
TINY_BYTES = "--max-bytes 200000"


def bash_blocks(text: str) -> list[str]:
    """The contents of the ```bash fences of a Markdown text, in order."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[str]:
    """A block's commands: one per line (with `\\` continuations joined), comments and blanks dropped.

    A here-document (`cat > f <<'EOF'` … `EOF`) is one command with its lines, as bash reads it.
    """
    lines = re.sub(r"\s*\\\n\s*", " ", block).splitlines()
    out: list[str] = []
    while lines:
        line = lines.pop(0)
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc:
            end = lines.index(heredoc.group(1))
            line = "\n".join([line, *lines[: end + 1]])
            del lines[: end + 1]
        out.append(line)
    return out


def _append(command: str, extra: str) -> str:
    """`extra` added to the command's own words: before a trailing `  # comment` and any redirect."""
    code, sep, comment = command.partition("  #")
    redirect = re.search(r"\s[>|].*$", code)
    head = code[: redirect.start()] if redirect else code
    tail = redirect.group(0) if redirect else ""
    return f"{head.rstrip()} {extra}{tail}{sep}{comment}"


def tiny(command: str) -> str:
    """The command with the tiny settings the module docstring lists."""
    code = command.partition("  #")[0]  # what a trailing comment mentions is not in the command
    if code.startswith("fornalha pipeline"):
        return _append(re.sub(r"\s--minutes\s+\S+", "", command), TINY_PIPELINE)
    if code.startswith("fornalha generate") and "--max-new-tokens" not in code:
        return _append(command, "--max-new-tokens 8")
    if code.startswith("fornalha data prepare"):
        command = re.sub(r"--workers\s+\d+", "--workers 2", command)
        return command if "--max-bytes" in code else _append(command, TINY_BYTES)
    if code.startswith("fornalha tokenizer train") and "--max-bytes" not in code:
        return _append(command, TINY_BYTES)
    if code.startswith(("fornalha train", "fornalha sweep")) and "--print-config" not in code:
        command = re.sub(r"--time-budget\s+\S+", "--time-budget 0.1", command)
        starts_a_run = any(flag in code for flag in ("--preset", "--config", "--data"))
        return _append(command, TINY_TRAIN if starts_a_run else TINY_RESUME)
    if code.startswith("fornalha recommend prepare") and "--min-interactions" not in code:
        return _append(command, "--min-interactions 40")
    if code.startswith("fornalha recommend train"):
        return _append(re.sub(r"\s--time-budget\s+\S+", "", command), "--time-budget 0.1")
    if code.startswith("fornalha eval"):
        command = re.sub(r"--limit\s+\d+", "--limit 20", command)
        return _append(command, "--max-tokens 4096")
    return command


def test_block_extraction_and_rewrites():
    text = "```bash\nfornalha a \\\n  --b 1  # c\n# only a comment\n```\n```console\nfornalha serve\n```\n"
    assert [commands(b) for b in bash_blocks(text)] == [["fornalha a --b 1  # c"]]
    assert commands("cat > r.yaml <<'EOF'\na: 1\n# kept\nEOF\nls\n") == [
        "cat > r.yaml <<'EOF'\na: 1\n# kept\nEOF",
        "ls",
    ]
    assert (
        tiny("fornalha generate --run r -p x > o.jsonl")
        == "fornalha generate --run r -p x --max-new-tokens 8 > o.jsonl"
    )
    assert "--minutes 1.4 " in tiny("fornalha pipeline --minutes 20 --out r") and "20" not in tiny(
        "fornalha pipeline --minutes 20 --out r"
    )
    assert tiny("fornalha train --preset tiny --time-budget 10 --out r  # c").endswith(f"{TINY_TRAIN}  # c")
    assert "--time-budget 0.1 " in tiny("fornalha train --preset tiny --time-budget 10 --out r")
    assert tiny("fornalha train --out r --resume") == f"fornalha train --out r --resume {TINY_RESUME}"
    assert (
        tiny("fornalha train --print-config --preset small") == "fornalha train --print-config --preset small"
    )
    assert tiny("fornalha data prepare --source x --workers 8 --out d") == (
        f"fornalha data prepare --source x --workers 2 --out d {TINY_BYTES}"
    )
    assert tiny("fornalha tokenizer train --data d --out t  # [--max-bytes N]") == (
        f"fornalha tokenizer train --data d --out t {TINY_BYTES}  # [--max-bytes N]"
    )
    assert tiny("fornalha eval --run r --limit 1000") == "fornalha eval --run r --limit 20 --max-tokens 4096"


def run_guide(guide: str, repo: Path) -> int:
    """Run every ```bash command of `guide` in `repo`; the number run. Fails on the first that fails."""
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
    for block in bash_blocks((ROOT / guide).read_text(encoding="utf-8")):
        for command in commands(block):
            script = shim + "set -o pipefail\n" + tiny(command) + "\n"
            r = subprocess.run(
                ["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=600
            )
            assert r.returncode == 0, f"{guide}: `{command}` failed ({r.returncode}):\n{r.stderr[-2000:]}"
            assert "Traceback" not in r.stderr, f"{guide}: `{command}`:\n{r.stderr[-2000:]}"
            ran += 1
    return ran


# One test that runs the guides in order: each guide uses what earlier ones made, so they must run in one
# process, one after another (split into one test per guide, xdist spread them over its workers).
@pytest.mark.timeout(1800)
def test_guides_run_in_order(tmp_path: Path):
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the guides read ../shared/data")
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    for guide in GUIDES:
        ran = run_guide(guide, repo)
        assert ran >= 1, f"{guide} has no ```bash command: a guide that runs nothing holds nothing"
        if guide == "README.md":
            assert ran >= 2 and (repo / "runs/demo/report.html").is_file()
        if guide == "docs/inference.md":
            assert ran >= 6
            assert (repo / "outputs.jsonl").read_text().count("\n") == 2  # one JSON line out per prompt
            assert (repo / "chat.json").is_file()


def test_every_guide_with_runnable_commands_is_run():
    """A ```bash block promises the command runs as written: its guide must be in GUIDES (examples
    that need a server, a GPU or a download go in ```console blocks instead)."""
    with_bash = {
        str(p.relative_to(ROOT))
        for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        if bash_blocks(p.read_text(encoding="utf-8"))
    }
    assert with_bash <= set(GUIDES), f"not run by this test: {sorted(with_bash - set(GUIDES))}"
