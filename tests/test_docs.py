"""The README and docs/ are the user's manual, so their examples run under test.

- every ``$ layerport ...`` line in a ``console`` block runs and exits 0;
- the Python API example runs;
- the plugin tutorial's files, extracted as they stand, install with pip, load
  through their entry point, export, and pass their own tests;
- the CLI reference (docs/cli.md) is each command's current ``--help``, and the
  spec reference (docs/plugins.md) the spec's current fields;
- the README stays short, maps every page of docs/, and every link resolves.

Run ``python tests/test_docs.py --update`` to regenerate both references.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import install_for_test, run_package_tests, run_process

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
CLI_PAGE, MODELS_PAGE, PLUGINS_PAGE = DOCS / "cli.md", DOCS / "models.md", DOCS / "plugins.md"
RELIABILITY_PAGE = DOCS / "reliability.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


WALKTHROUGH = re.compile(r"<!-- walkthrough:start -->(.*?)<!-- walkthrough:end -->", re.DOTALL)
DECODER = re.compile(r"<!-- decoder:start -->(.*?)<!-- decoder:end -->", re.DOTALL)
TRANSFORMERS = re.compile(r"<!-- transformers:start -->(.*?)<!-- transformers:end -->", re.DOTALL)
# Run by test_triton_server.py, which builds the serving environment it needs.
SERVING = re.compile(r"<!-- serving:start -->(.*?)<!-- serving:end -->", re.DOTALL)


def code_blocks(language: str, text: str | None = None) -> list[str]:
    """The manual's blocks in ``language``; the walk-throughs' and serving's run in their own tests."""
    if text is None:
        whole = "\n".join(page.read_text() for page in PAGES)
        for walkthrough in (WALKTHROUGH, DECODER, TRANSFORMERS, SERVING):
            whole = walkthrough.sub("", whole)
        text = whole
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def cli_reference() -> str:
    from layerport.cli import cli

    sections = []
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        result = CliRunner().invoke(cli, [name, "--help"], terminal_width=88, prog_name="layerport")
        sections.append(f"## layerport {name}\n\n```text\n{result.output.rstrip()}\n```\n")
    return "\n".join(sections)


def test_cli_reference_is_current() -> None:
    text = CLI_PAGE.read_text()
    current = text[text.index(START) + len(START) : text.index(END)].strip()
    assert current == cli_reference().strip(), "run: python tests/test_docs.py --update"


def test_console_examples_run(tmp_path: Path) -> None:
    commands = [
        line.removeprefix("$ layerport ").strip()
        for block in code_blocks("console")
        for line in block.splitlines()
        if line.startswith("$ layerport ")
    ]
    assert len(commands) >= 8
    for command in commands:
        result = run_process(*shlex.split(command), cwd=tmp_path)
        assert result.exit_code == 0, f"layerport {command}: {result.stderr}"
        assert "Traceback" not in result.stderr


def test_export_a_trained_model_walkthrough_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its Python blocks and its commands, in order, in one folder, as a reader runs them."""
    section = WALKTHROUGH.search(MODELS_PAGE.read_text())
    assert section is not None
    blocks = re.findall(r"```(python|console|toml)\n(.*?)```", section.group(1), flags=re.DOTALL)
    assert [language for language, _ in blocks] == [
        "python", "toml", "console", "python", "console", "python"
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    # The blocks call `layerport` as a reader's shell would find it.
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    namespace: dict[str, object] = {"__name__": "walkthrough"}
    for language, body in blocks:
        if language == "python":
            exec(compile(body, "docs/models.md", "exec"), namespace)
            continue
        if language == "toml":
            first, _, text = body.partition("\n")
            (tmp_path / first.removeprefix("# file: ")).write_text(text)
            continue
        for line in body.splitlines():
            if line.startswith("$ layerport "):
                result = run_process(*shlex.split(line.removeprefix("$ layerport ")), cwd=tmp_path)
                assert result.exit_code == 0, f"{line}: {result.stderr}"
                assert "verification: passed" in result.stdout
                assert "using its 'model_state_dict' entry" in result.stderr
    assert (tmp_path / "out.npz").is_file()
    assert (tmp_path / "tagger.onnx").is_file()


def test_decoder_walkthrough_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder's checkpoint, model file, export and generation, as a reader runs them."""
    section = DECODER.search(MODELS_PAGE.read_text())
    assert section is not None
    blocks = re.findall(r"```(python|console|toml)\n(.*?)```", section.group(1), flags=re.DOTALL)
    assert [language for language, _ in blocks] == ["python", "toml", "console"]
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0][1], "docs/models.md", "exec"), {"__name__": "decoder"})
    first, _, text = blocks[1][1].partition("\n")
    (tmp_path / first.removeprefix("# file: ")).write_text(text)
    export, generate = [
        line.removeprefix("$ layerport ") for line in blocks[2][1].splitlines() if line.strip()
    ]
    exported = run_process(*shlex.split(export), cwd=tmp_path)
    assert exported.exit_code == 0, exported.stderr
    assert "streaming decoding: prompt" in exported.stdout
    # The summary the page shows after the walk-through is the one the export prints.
    shown_summary = re.search(
        r"<!-- decoder:end -->\n\n```text\n(.*?)```", MODELS_PAGE.read_text(), re.DOTALL
    )
    assert shown_summary is not None
    for key in ("size:", "nodes:", "dynamic dims:"):
        line = next(line for line in exported.stdout.splitlines() if line.startswith(key))
        assert line in shown_summary.group(1).splitlines(), line
    generated = run_process(*shlex.split(generate), cwd=tmp_path)
    assert generated.exit_code == 0, generated.stderr
    assert "eager PyTorch picked the same 8 ids" in generated.stderr
    assert re.fullmatch(r"\d+(,\d+){7}\n", generated.stdout)
    shown = re.search(r"\(`([\d,]+)` here\)", MODELS_PAGE.read_text())
    assert shown is not None and generated.stdout.strip() == shown.group(1)


def test_transformers_folder_walkthrough_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder transformers saved: drafted, exported and decoded as the page shows, to
    transformers' own ids."""
    transformers = pytest.importorskip("transformers")
    from oracles import transformers_greedy_ids

    text = MODELS_PAGE.read_text()
    section = TRANSFORMERS.search(text)
    assert section is not None
    blocks = re.findall(r"```(python|console)\n(.*?)```", section.group(1), flags=re.DOTALL)
    assert [language for language, _ in blocks] == ["python", "console"]
    monkeypatch.chdir(tmp_path)
    transformers.utils.logging.disable_progress_bar()
    exec(compile(blocks[0][1], "docs/models.md", "exec"), {"__name__": "transformers_folder"})
    draft, export, generate = [
        line.removeprefix("$ layerport ") for line in blocks[1][1].splitlines() if line.strip()
    ]
    command, _, target = draft.partition(" > ")
    drafted = run_process(*shlex.split(command), cwd=tmp_path)
    assert drafted.exit_code == 0 and drafted.stderr == "", drafted.stderr
    (tmp_path / target).write_text(drafted.stdout)
    shown = re.search(r"The draft's blocks read:\n\n```text\n(.*?)```", text, re.DOTALL)
    assert shown is not None and shown.group(1) in drafted.stdout
    exported = run_process(*shlex.split(export), cwd=tmp_path)
    assert exported.exit_code == 0, exported.stderr
    assert "streaming decoding: prompt" in exported.stdout
    generated = run_process(*shlex.split(generate), cwd=tmp_path)
    assert generated.exit_code == 0, generated.stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-llama").eval()
    expected = transformers_greedy_ids(model, [1, 2, 3], 8)
    assert generated.stdout.strip() == ",".join(map(str, expected))


def test_python_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = next(block for block in code_blocks("python") if "rnn32.onnx" in block)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs", "exec"), {"__name__": "readme_example"})
    assert (tmp_path / "rnn32.onnx").is_file()


def test_weight_parts_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = next(block for block in code_blocks("python") if "recurrence=rnn." in block)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    exec(compile(example, "docs", "exec"), {"__name__": "readme_example"})
    verified = run_process("verify", "rnn.onnx", "--weights", "captioner.pt", cwd=tmp_path)
    assert verified.exit_code == 0 and "result:    passed" in verified.stdout, verified


def test_draft_example_prints_what_the_page_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MODELS_PAGE.read_text()
    example = next(block for block in code_blocks("python") if '"draft"' in block)
    shown = re.search(
        r"```python\n" + re.escape(example) + r"```\n\n```toml\n(.*?)```", text, re.DOTALL
    )
    assert shown is not None, "the draft example's output follows it in a toml block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    exec(compile(example, "docs/models.md", "exec"), {"__name__": "draft_example"})
    assert capsys.readouterr().out == shown.group(1)


def test_plugin_tutorial_works_as_written(tmp_path: Path) -> None:
    files = {}
    for language in ("toml", "python"):
        for block in code_blocks(language):
            first, _, body = block.partition("\n")
            if first.startswith("# file: "):
                files[first.removeprefix("# file: ").strip()] = body
    assert set(files) == {
        "layerport-mynorm/pyproject.toml",
        "layerport-mynorm/layerport_mynorm/__init__.py",
        "layerport-mynorm/layerport_mynorm/module.py",
        "layerport-mynorm/tests/test_mynorm.py",
    }
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    package = tmp_path / "layerport-mynorm"
    # The tutorial loads only its own plugin, as it says.
    env = {
        **install_for_test(package, tmp_path / "site"),
        "LAYERPORT_LOAD_PLUGINS": "layerport-mynorm",
    }
    plugins = run_process("plugins", env=env)
    assert "layerport-mynorm" in plugins.stdout and "mynorm" in plugins.stdout, plugins
    assert run_process("show", "mynorm", env=env).exit_code == 0
    exported = run_process("export", "mynorm", "-o", str(tmp_path / "r.onnx"), env=env)
    assert exported.exit_code == 0, exported.stderr
    output = run_package_tests(package, env)
    assert "8 passed" in output  # seven conformance checks and the oracle


SPEC_START, SPEC_END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"
# The classes a plugin author writes, in the order a spec is read, and where each lives.
SPEC_CLASSES = (
    ("layerport/spec/__init__.py", "LayerSpec"),
    ("layerport/spec/__init__.py", "Param"),
    ("layerport/spec/__init__.py", "Dim"),
    ("layerport/spec/__init__.py", "Tensor"),
    ("layerport/spec/__init__.py", "Streaming"),
    ("layerport/spec/__init__.py", "WeightPart"),
    ("layerport/spec/forms.py", "ExportForm"),
    ("layerport/dtypes.py", "Tolerance"),
)
TESTING_NAMES = ("CHECKS", "check_layer", "build_layer", "exported_layer")


def spec_reference() -> str:
    """Every field of the spec's classes, from their source: type, default and attribute docstring.

    Read with ``ast``, not imported, so the reference is the code as written.
    """
    import ast

    import layerport

    package = Path(layerport.__file__).parent.parent
    sections = []
    for relative, name in SPEC_CLASSES:
        tree = ast.parse((package / relative).read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
        summary = (ast.get_docstring(cls) or "").split("\n\n")[0].replace("\n", " ")
        rows = []
        body = cls.body
        for index, node in enumerate(body):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            following = body[index + 1] if index + 1 < len(body) else None
            doc = (
                following.value.value
                if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                else ""
            )
            assert doc, f"{name}.{node.target.id} has no attribute docstring"
            default = "required" if node.value is None else f"`{ast.unparse(node.value)}`"
            if default.startswith("`field(default_factory=lambda: "):
                default = (
                    f"`{default.removeprefix('`field(default_factory=lambda: ').rstrip(')`')})`"
                )
            meaning = " ".join(doc.split()).replace("``", "`").replace("|", "\\|")
            annotation = ast.unparse(node.annotation).replace("|", "\\|")
            rows.append(f"| `{node.target.id}` | `{annotation}` | {default} | {meaning} |")
        sections.append(
            f"### `{name}`\n\n{summary}\n\n| field | type | default | meaning and example |\n"
            "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
        )
    from layerport import testing

    lines = []
    for item in TESTING_NAMES:
        value = getattr(testing, item)
        if item == "CHECKS":
            checks = ", ".join(f"`{check.__name__}`" for check in value)
            lines.append(f"- `CHECKS`: every check, in order, each `check(layer)`: {checks}.")
            continue
        doc = " ".join((value.__doc__ or "").split("\n\n")[0].split())
        # Annotations are strings under `from __future__ import annotations`; unquote them.
        signature = re.sub(r"(: |-> )'([^']*)'", r"\1\2", str(inspect.signature(value)))
        lines.append(f"- `{item}{signature}`: {doc}".replace("``", "`"))
    sections.append(
        "### The conformance kit (`layerport.plugin`, from `layerport.testing`)\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return "\n".join(sections)


def test_spec_reference_is_current() -> None:
    text = PLUGINS_PAGE.read_text()
    current = text[text.index(SPEC_START) + len(SPEC_START) : text.index(SPEC_END)].strip()
    assert current == spec_reference().strip(), "run: python tests/test_docs.py --update"


def update_docs() -> None:
    for page, start, end, body in (
        (CLI_PAGE, START, END, cli_reference()),
        (PLUGINS_PAGE, SPEC_START, SPEC_END, spec_reference()),
    ):
        before, rest = page.read_text().split(start)
        _, after = rest.split(end)
        page.write_text(f"{before}{start}\n{body}\n{end}{after}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        update_docs()
    else:
        print(__doc__)


def test_every_reliability_row_is_tested() -> None:
    """Each message the reliability table promises appears, word for word, in a test."""
    text = RELIABILITY_PAGE.read_text()
    table = text[text.index("<!-- reliability:start -->") : text.index("<!-- reliability:end -->")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 50
    # Only string literals count: a fragment in a comment asserts nothing.
    files = [*Path(__file__).parent.glob("test_*.py"), Path(__file__).with_name("hostile.py")]
    sources = "\n".join(literal for path in files for literal in _string_literals(path))
    for row in rows:
        promised = row.rstrip(" |").rsplit(" | ", 1)[-1]
        for fragment in re.findall(r"`([^`]+)`", promised):
            assert fragment in sources, f"no test checks {fragment!r} ({row.split(' | ')[0]})"


def _string_literals(path: Path) -> list[str]:
    """Every string constant in a Python file, f-strings' literal parts included."""
    import ast

    tree = ast.parse(path.read_text())
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_plugin_readmes_work_from_any_clone() -> None:
    for readme in (ROOT / "plugins").glob("*/README.md"):
        text = readme.read_text()
        assert "/work/" not in text, f"{readme} names a local checkout"
        for line in text.splitlines():
            if "pip install" in line:
                assert "-c constraints.txt" in line, f"{readme}: {line.strip()}"


def test_the_readme_starts_short_and_maps_every_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 400
    for heading in ("## Install: the two commands", "## Quick start", "## Documentation"):
        assert heading in text
    pages = {page.name for page in DOCS.glob("*.md")}
    assert len(pages) >= 10
    linked = set(re.findall(r"\]\(docs/([\w\-]+\.md)\)", text))
    assert linked == pages, f"pages not in the README's map: {sorted(pages - linked)}"


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings (outside code blocks)."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    headings = re.findall(r"^#+ (.*)$", text, flags=re.MULTILINE)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings
    }


def test_every_link_in_the_manual_resolves() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (
                anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text())
            ):
                broken.append(f"{page.name}: {target}")
    assert not broken, broken


def test_the_link_check_can_fail() -> None:
    assert "quick-start" in _anchors("# x\n## Quick start\n```\n# not a heading\n```")
    assert "not-a-heading" not in _anchors("```\n# not a heading\n```")
