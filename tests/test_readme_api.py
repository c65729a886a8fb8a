"""The README's API section and its links hold for the code as it is.

Outside reviewers run what the README says. What can be checked mechanically is checked here:
the "API at a glance" import block runs; every `kseg.<module>.<name>` named in backticks
there imports; every call written in backticks under a **`kseg.<module>`** paragraph names a
function of that module, and its keywords, the parameters it names by position and its
literal defaults match ``inspect.signature``; every ``--flag`` of a `kseg ...` or
`python examples/...` command the README shows is in that command's ``--help``; the
Architecture layout names every file of kseg/ and no missing one; every ``](#anchor)`` link
resolves to a heading by GitHub's anchor rule, and every local link and image points at a
file that exists.
"""

import ast
import importlib
import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BUILDER_READMES = sorted(ROOT.glob("tfds_builders/*/README.md"))

# Calls in the API prose that belong to other libraries, not to the paragraph's module.
FOREIGN_PREFIXES = ("tf.", "keras.", "mlflow.", "np.", "tfds.")


def _without_code_blocks(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _api_section():
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## API at a glance\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _module_paragraphs():
    """(module name, paragraph text) for each **`kseg.x`** paragraph of the API section."""
    section = _api_section()
    starts = list(re.finditer(r"^\*\*`(kseg(?:\.\w+)*)`\*\*", section, re.M))
    assert len(starts) >= 15, "the API section lost its **`kseg.<module>`** paragraphs"
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        end = following.start() if following else len(section)
        yield match.group(1), section[match.start():end]


def _resolve(dotted, base=None):
    """The object `dotted` names: absolute when it starts with kseg., else within `base`."""
    parts = dotted.split(".")
    if parts[0] == "kseg":
        for split in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:split]))
            except ModuleNotFoundError:
                continue
            rest = parts[split:]
            break
    else:
        obj, rest = importlib.import_module(base), parts
    for part in rest:
        if not hasattr(obj, part):
            where = getattr(obj, "__name__", repr(obj))
            raise AttributeError(f"{where} has no {part!r}")
        obj = getattr(obj, part)
    return obj


def _top_level_arguments(text):
    """Split `text` at the commas that are not inside brackets or quotes."""
    arguments, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            arguments.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        arguments.append(current.strip())
    return arguments


def _calls(paragraph):
    """(callable name, argument text) of every `name(...)` written in backticks."""
    for code in re.findall(r"`([^`]+)`", paragraph.replace("\n", " ")):
        match = re.fullmatch(r"([A-Za-z_][\w.]*)\((.*)\)", code.strip())
        if match and not match.group(1).startswith(FOREIGN_PREFIXES):
            yield match.group(1), match.group(2)


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return inspect.Parameter.empty


def _signature_mismatches(name, obj, argument_text):
    """What the README's call `name(argument_text)` gets wrong about `obj`'s signature."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    parameters = list(signature.parameters.values())
    if parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    by_name = {p.name: p for p in parameters}
    takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
    takes_any_position = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems, position, after_star = [], 0, False
    for argument in _top_level_arguments(argument_text):
        if argument in ("...", "…", "**kwargs"):
            continue
        if argument == "*":
            after_star = True
            continue
        keyword = re.fullmatch(r"(\w+)\s*=\s*(.*)", argument, re.S)
        bare = re.fullmatch(r"\w+", argument)
        if keyword or (bare and after_star):
            key = keyword.group(1) if keyword else argument
            if key not in by_name:
                if not takes_any_keyword:
                    problems.append(f"{name}: no parameter {key!r} (has {list(by_name)})")
                continue
            if keyword:
                written = _literal(keyword.group(2))
                actual = by_name[key].default
                if written not in (inspect.Parameter.empty, Ellipsis) and written != actual:
                    problems.append(f"{name}: {key} defaults to {actual!r}, README says "
                                    f"{keyword.group(2)}")
            continue
        keyword_only = bare and argument in by_name and (
            by_name[argument].kind is inspect.Parameter.KEYWORD_ONLY)
        if keyword_only:
            problems.append(f"{name}: {argument!r} is keyword-only, README passes it by position")
            continue
        if position >= len(positional):
            if not takes_any_position:
                problems.append(f"{name}: takes {len(positional)} positional arguments, "
                                f"README passes {argument!r} as one more")
            continue
        # A placeholder that names a parameter must sit at that parameter's position.
        if bare and argument in by_name and argument != positional[position].name:
            problems.append(f"{name}: {argument!r} is not its positional argument "
                            f"{position} ({positional[position].name!r})")
        position += 1
    return problems


def test_api_import_block_runs():
    block = re.search(r"```python\n(.*?)```", _api_section(), re.S).group(1)
    exec(compile(block, "README.md (API at a glance)", "exec"), {})


def test_every_qualified_kseg_name_in_the_api_section_imports():
    _assert_importable(_api_section(), at_least=20)


@pytest.mark.parametrize("readme", BUILDER_READMES, ids=lambda path: path.parent.name)
def test_every_qualified_kseg_name_in_a_builder_readme_imports(readme):
    _assert_importable(readme.read_text(encoding="utf-8"), at_least=3)


def _assert_importable(text, at_least):
    names = sorted(set(re.findall(r"`[^`]*?\b(kseg(?:\.[A-Za-z_]\w*)+)", text)))
    assert len(names) >= at_least
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{name}: {error}")
    assert not missing, "README names what kseg does not have:\n" + "\n".join(missing)


def test_every_call_in_a_module_paragraph_matches_its_signature():
    problems, checked = [], 0
    for module, paragraph in _module_paragraphs():
        for name, arguments in _calls(paragraph):
            try:
                obj = _resolve(name, base=module)
            except (ImportError, AttributeError) as error:
                problems.append(f"**`{module}`**: `{name}(...)`: {error}")
                continue
            checked += 1
            problems.extend(f"**`{module}`**: {p}"
                            for p in _signature_mismatches(name, obj, arguments))
    assert checked > 60
    assert not problems, "README calls that do not match the code:\n" + "\n".join(problems)


def _github_anchor(heading):
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_github_anchor_rule():
    assert _github_anchor("The plan (`--plan`)") == "the-plan---plan"
    assert _github_anchor("The `kseg` command and run folders") == (
        "the-kseg-command-and-run-folders")
    assert _github_anchor("Cross-validation and fold ensembles (`--validation-fold all`)") == (
        "cross-validation-and-fold-ensembles---validation-fold-all")


@pytest.mark.parametrize("readme", [README, *BUILDER_READMES],
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_anchor_links_resolve_to_headings(readme):
    text = readme.read_text(encoding="utf-8")
    headings = re.findall(r"^#{1,6} (.+)$", _without_code_blocks(text), re.M)
    anchors = {_github_anchor(heading) for heading in headings}
    broken = [a for a in re.findall(r"\]\(#([^)]+)\)", text) if a not in anchors]
    assert not broken, f"{readme.name}: links to missing headings: {broken}"


@pytest.mark.parametrize("readme", [README, *BUILDER_READMES],
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_local_links_and_figures_exist(readme):
    text = _without_code_blocks(readme.read_text(encoding="utf-8"))
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
               if not re.match(r"[a-z]+:", t)]
    missing = [t for t in targets if not (readme.parent / t).exists()]
    assert not missing, f"{readme.name}: links to missing files: {missing}"


def _layout_block():
    text = README.read_text(encoding="utf-8")
    start = text.index("\nLayout:\n")
    block = re.search(r"```\n(.*?)```", text[start:], re.S).group(1)
    folders, current = {}, None
    for line in block.splitlines():
        folder = re.match(r"(\S+/)\s", line)
        if folder:
            current = folder.group(1)
        if current:
            folders.setdefault(current, set()).update(re.findall(r"\b([\w]+\.py)\b", line))
    return folders


def test_architecture_layout_names_every_kseg_file_and_no_missing_one():
    folders = _layout_block()
    package_folders = sorted(p for p in (ROOT / "kseg").iterdir() if p.is_dir()
                             and (p / "__init__.py").exists())
    unnamed, missing = [], []
    for folder in [ROOT / "kseg", *package_folders]:
        key = f"{folder.relative_to(ROOT)}/"
        named = folders.get(key, set())
        if folder.name == "augment":
            # "one layer per file": the layers are not listed one by one.
            named |= {p.name for p in folder.glob("random_*.py")}
        on_disk = {p.name for p in folder.glob("*.py")} - {"__init__.py"}
        unnamed += [f"{key}{name}" for name in sorted(on_disk - named)]
        missing += [f"{key}{name}" for name in sorted(named - on_disk - {"__init__.py"})]
    assert not unnamed, f"README's Architecture layout leaves out: {unnamed}"
    assert not missing, f"README's Architecture layout names files that do not exist: {missing}"


def _readme_commands():
    """Every `kseg ...` and `python examples/<script>.py ...` command the README shows: lines
    of its bash blocks (continuations joined, environment assignments dropped) and inline
    code spans."""
    text = README.read_text(encoding="utf-8")
    lines, block, language = [], None, None
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if block is None:
                block, language = [], line[3:].strip()
            else:
                if language in ("", "bash"):
                    lines += "".join(block).replace("\\\n", " ").splitlines()
                block = None
        elif block is not None:
            block.append(line)
    prose = _without_code_blocks(text)
    lines += [" ".join(span.split())
              for span in re.findall(r"`((?:kseg|python examples/)[^`]*)`", prose)]
    # Shell variables the blocks define (OPTIONS="..."), substituted where they are used.
    variables = dict(re.findall(r'^(\w+)="([^"]*)"\s*$', "\n".join(lines), re.M))
    commands = []
    for line in lines:
        line = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), line)
        for part in re.split(r"&&|;", line.split("#")[0].replace("\\|", "|")):
            part = re.sub(r'^\s*(\w+=("(\\.|[^"\\])*"|\S*)\s+)*', "", part).strip()
            if re.match(r"(kseg|python examples/\w+\.py)(\s|$)", part):
                commands.append(part)
    return commands


def _help_text(argv):
    import contextlib
    import io

    from kseg import cli

    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return output.getvalue()


def _example_recipe(script):
    source = (ROOT / script).read_text(encoding="utf-8")
    return re.search(r"^from kseg\.recipes import (\w+)", source, re.M).group(1)


def test_every_flag_of_a_readme_command_exists():
    from kseg.recipes import RECIPES
    from kseg.studies import STUDIES

    commands = _readme_commands()
    assert len(commands) > 25
    helps, problems = {}, []
    for command in commands:
        words = command.split()
        if words[0] == "python":
            argvs = [("train", _example_recipe(words[1]))]
        else:
            sub = words[1] if len(words) > 1 else ""
            if sub in ("train", "tune"):
                named = words[2] if len(words) > 2 and words[2] in RECIPES else None
                argvs = [(sub, named)] if named else [(sub, r) for r in RECIPES]
            elif sub == "study":
                named = words[2] if len(words) > 2 and words[2] in STUDIES else None
                argvs = [(sub, named)] if named else [(sub, s) for s in STUDIES]
            else:
                argvs = [(sub,)] if sub else [()]
        for argv in argvs:
            if argv not in helps:
                helps[argv] = _help_text(list(argv))
        known = "".join(helps[argv] for argv in argvs)
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", command):
            if not re.search(re.escape(flag) + r"(?![\w-])", known):
                problems.append(f"{command}: {flag}")
    assert not problems, "README commands with options kseg does not have:\n" + "\n".join(
        problems)
