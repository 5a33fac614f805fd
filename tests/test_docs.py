"""The README and docs/: short, linked correctly, naming what exists, and every example runs as shown.

- Relative links resolve (files and `#anchors`), and the paths and modules the docs name exist.
- docs/configuration.md is what `outguard config-docs` writes from the settings' descriptions.
- Every `curl` example in README.md and docs/ runs against the app (built as the other API tests
  build it, on a fresh database), in the order the page gives them, after the README's own; where
  a ```json block follows, the answer matches it (the same keys; values as shown, numbers to the
  digits shown; a list shown may be the first items of a longer one).
- Every `outguard ...` and `python -m ...` command named in a shell block exists, with the options it uses.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import importlib.util
import json
import re
import shlex
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import typer
import yaml
from fastapi.testclient import TestClient
from httpx import Response
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.cli import configuration_reference
from service.settings import PROJECT_ROOT, Settings

ROOT = PROJECT_ROOT
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
RFC822 = {"content-type": "message/rfc822"}
# Top-level folders of the repository: a backticked `folder/...` in the docs names a file there.
REPO_FOLDERS = ("service", "features", "models", "training", "bench", "tests", "docs", ".ci")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- reading Markdown


FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


NAMED_FILE = re.compile(r"^```eml (\S+)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def example_files() -> dict[str, bytes]:
    """The reports the API page shows inline (```eml NAME blocks), which its curl examples post as @NAME."""
    return {m.group(1): m.group(2).encode() for m in NAMED_FILE.finditer((DOCS / "api.md").read_text())}


def fenced_blocks(text: str) -> list[tuple[str, str, int, int]]:
    """(language, body, start, end) of every fenced code block."""
    return [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without fenced blocks and inline code: where links live."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text: str) -> set[str]:
    """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", text), re.MULTILINE):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", plain.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose(text))


# -- the README


def test_the_readme_fits_on_a_few_screens() -> None:
    size = len(README.read_bytes())
    assert size <= 8_192, f"README.md is {size:,} bytes; move detail to docs/ (at most about 8 KB)"


def test_the_readme_links_every_page_under_docs() -> None:
    linked = {(README.parent / unquote(target.split("#")[0])).resolve() for target in links(README.read_text())}
    missing = [page_id(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not missing, f"pages under docs/ the README does not link: {missing}"


# -- links, paths and modules


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text()
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / unquote(path)).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page_id(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_paths_exist(page: Path) -> None:
    folders = "|".join(map(re.escape, REPO_FOLDERS))
    named = re.findall(rf"`((?:{folders})/[\w./-]*)`", page.read_text())
    missing = sorted({path for path in named if not (ROOT / path.rstrip("/")).exists()})
    assert not missing, f"{page_id(page)} names files that do not exist: {missing}"


def resolve_dotted(name: str) -> object:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_modules_exist(page: Path) -> None:
    named = set(re.findall(r"`((?:service|features|models|training|bench)(?:\.\w+)+)`", page.read_text()))
    missing = []
    for name in sorted(named):
        try:
            resolve_dotted(name)
        except (ModuleNotFoundError, AttributeError):
            missing.append(name)
    assert not missing, f"{page_id(page)} names modules or objects that do not exist: {missing}"


# -- the configuration reference


runner = CliRunner()


def test_the_configuration_reference_is_current() -> None:
    result = runner.invoke(cli_app, ["config-docs", "--check"])
    assert result.exit_code == 0, result.output
    assert (DOCS / "configuration.md").read_text() == configuration_reference()


def test_config_docs_writes_the_file_and_check_says_when_it_is_stale(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"
    missing = runner.invoke(cli_app, ["config-docs", "--check", "--output", str(target)])
    assert missing.exit_code == 1
    assert missing.output.strip().count("\n") == 0 and "missing" in missing.output
    written = runner.invoke(cli_app, ["config-docs", "--output", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text() == configuration_reference()
    assert runner.invoke(cli_app, ["config-docs", "--check", "--output", str(target)]).exit_code == 0
    target.write_text(target.read_text().replace("OUTGUARD_PORT", "OUTGUARD_PORTS"))
    stale = runner.invoke(cli_app, ["config-docs", "--check", "--output", str(target)])
    assert stale.exit_code == 1
    assert stale.output.strip().count("\n") == 0, stale.output
    assert "stale" in stale.output and "outguard config-docs" in stale.output


def settings_fields() -> list[tuple[str, object]]:
    """(dotted name, FieldInfo) of every setting, the fields of the models inside them included."""
    import typing

    from pydantic import BaseModel

    found = []
    seen: set[type] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            found.append((prefix + name, field))
            pending = [field.annotation]
            while pending:
                annotation = pending.pop()
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    if annotation not in seen:
                        seen.add(annotation)
                        walk(annotation, f"{prefix}{name}.")
                else:
                    pending += typing.get_args(annotation)

    walk(Settings, "")
    return found


def test_every_setting_has_a_description() -> None:
    bare = [name for name, field in settings_fields() if not (field.description or "").strip()]  # type: ignore[attr-defined]
    assert not bare, f"settings without a description (service/settings.py): {bare}"


def documented_variables() -> dict[str, str]:
    """Variable -> setting, from the rows of docs/configuration.md (the first name of each row)."""
    rows = re.findall(r"^\| `(OUTGUARD_\w+)`", (DOCS / "configuration.md").read_text(), re.MULTILINE)
    return {variable: variable.removeprefix("OUTGUARD_").lower() for variable in rows}


def candidate_values(default: object) -> list[str]:
    """Values, as an environment variable would carry them, that differ from the default."""
    if isinstance(default, bool):
        return [str(not default).lower()]
    if isinstance(default, int | float):
        return [str(v) for v in (default + 1, default * 2, default / 2, default - 1) if v != default]
    if isinstance(default, list):
        return [json.dumps(default[:1])] if default else []
    return ["docs-test", "127.0.0.2", "tcp:127.0.0.1:3310", "/tmp/outguard-docs-test"]


def test_each_documented_variable_reaches_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set each documented variable to another valid value: the setting of that name takes it."""
    from pydantic import SecretStr, ValidationError
    from pydantic_settings import SettingsError

    checked = 0
    for variable, name in documented_variables().items():
        if name not in Settings.model_fields:
            continue  # a nested model's own variable: its keys are checked through JSON elsewhere
        default = Settings.model_fields[name].get_default(call_default_factory=True)
        for value in candidate_values(default):
            monkeypatch.setenv(variable, value)
            try:
                settings = Settings()
            except (ValidationError, SettingsError):
                continue
            finally:
                monkeypatch.delenv(variable)
            got = getattr(settings, name)
            got = got.get_secret_value() if isinstance(got, SecretStr) else got
            assert got != default, f"{variable}={value} did not change `{name}`"
            checked += 1
            break
    assert checked >= 60, f"only {checked} documented variables could be checked"


# -- every endpoint is documented


def test_every_endpoint_is_in_the_api_docs(client: TestClient) -> None:
    text = (DOCS / "api.md").read_text()
    normalised = re.sub(r"\{[^}]+\}", "{}", text)
    paths = [*client.app.openapi()["paths"], "/metrics", "/dashboard"]
    missing = [path for path in paths if re.sub(r"\{[^}]+\}", "{}", path) not in normalised]
    assert not missing, f"endpoints docs/api.md does not describe: {missing}"


# -- the examples run as shown


def shell_commands(block: str) -> list[list[str]]:
    """A shell block's commands as argument lists: continuations and quotes across lines joined, comments dropped."""
    commands, pending = [], ""
    for line in block.splitlines():
        pending += line + "\n"
        if pending.rstrip().endswith("\\"):
            continue
        lexer = shlex.shlex(pending.replace("\\\n", " "), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # a quote still open: the command goes on
            continue
        if tokens:
            commands.append(tokens)
        pending = ""
    assert not pending.strip(), f"an unfinished command: {pending!r}"
    return commands


OPERATORS = {"|", "||", "&&", "&", ";", ">", ">>", "<", "<<", "(", ")"}


def curl_examples(page: Path) -> list[tuple[list[str], str | None]]:
    """The page's standalone curl commands, each with the JSON answer shown after its block (for the last one)."""
    text = page.read_text()
    blocks = fenced_blocks(text)
    found: list[tuple[list[str], str | None]] = []
    for index, (language, body, _, end) in enumerate(blocks):
        if language not in ("sh", "bash", "shell"):
            continue
        commands = [c for c in shell_commands(body) if c[0] == "curl" and not OPERATORS & set(c)]
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        shown = None
        if following and following[0] == "json" and not text[end : following[2]].strip():
            shown = following[1]
        found += [(command, shown if i == len(commands) - 1 else None) for i, command in enumerate(commands)]
    return found


def run_curl(client: TestClient, args: list[str]) -> Response:
    """What `curl` does with these arguments, through the test client (the subset the docs use)."""
    method, headers, body, url = None, {}, None, None
    words = iter(args[1:])
    for word in words:
        if word in ("-s", "-S", "-sS", "--silent", "-f", "--fail"):
            continue
        if word in ("-H", "--header"):
            name, _, value = next(words).partition(":")
            headers[name.strip()] = value.strip()
        elif word in ("-d", "--data", "--data-binary", "--data-raw"):
            value = next(words)
            if value.startswith("@") and word != "--data-raw":
                inline = example_files().get(value[1:])
                body = inline if inline is not None else (ROOT / value[1:]).read_bytes()
                if word != "--data-binary":  # curl -d strips the file's line breaks
                    body = body.replace(b"\r", b"").replace(b"\n", b"")
            else:
                body = value.encode()
        elif word in ("-X", "--request"):
            method = next(words)
        elif word.startswith("-"):
            raise AssertionError(f"the docs' curl runner does not know {word} (in {shlex.join(args)})")
        else:
            url = word
    assert url, f"no URL in {shlex.join(args)}"
    parts = urlsplit(url if "://" in url else f"http://{url}")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return client.request(method or ("POST" if body is not None else "GET"), target, content=body, headers=headers)


def mismatches(shown: object, actual: object, where: str = "answer") -> list[str]:
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{where}: {actual!r} is not an object"]
        found = [] if set(shown) == set(actual) else [f"{where}: keys {sorted(actual)}, shown {sorted(shown)}"]
        for key in shown.keys() & actual.keys():
            found += mismatches(shown[key], actual[key], f"{where}.{key}")
        return found
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(actual) < len(shown):
            return [f"{where}: {actual!r}, shown {shown!r}"]
        return [
            m for i, (s, a) in enumerate(zip(shown, actual, strict=False)) for m in mismatches(s, a, f"{where}[{i}]")
        ]
    if isinstance(shown, Decimal):
        tolerance = Decimal(5) * Decimal(10) ** (shown.as_tuple().exponent - 1)  # type: ignore[operator]
        number = isinstance(actual, int | float) and not isinstance(actual, bool)
        return (
            [] if number and abs(Decimal(str(actual)) - shown) <= tolerance else [f"{where}: {actual!r}, shown {shown}"]
        )
    return [] if shown == actual else [f"{where}: {actual!r}, shown {shown!r}"]


def run_examples(client: TestClient, page: Path) -> int:
    ran = 0
    for command, shown in curl_examples(page):
        response = run_curl(client, command)
        assert response.status_code < 400, (
            f"{page_id(page)}: {shlex.join(command)}\n-> {response.status_code} {response.text}"
        )
        if shown is not None:
            problems = mismatches(json.loads(shown, parse_float=Decimal), response.json())
            assert not problems, f"{page_id(page)}: {shlex.join(command)}\n" + "\n".join(problems)
        ran += 1
    return ran


PAGES_WITH_CURL = [page for page in PAGES if curl_examples(page)]


@pytest.mark.parametrize("page", PAGES_WITH_CURL, ids=page_id)
def test_curl_examples_answer_as_shown(client: TestClient, page: Path) -> None:
    if page != README:
        run_examples(client, README)  # the pages build on the README's example message
    assert run_examples(client, page) >= 1


def test_the_readme_example_is_one_scored_message(client: TestClient) -> None:
    [(command, shown)] = curl_examples(README)
    assert shown is not None, "the README's curl example shows its answer in a ```json block after it"
    response = run_curl(client, command)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(json.loads(shown)) == set(answer)
    assert answer["action"] == json.loads(shown)["action"]


def test_the_example_reports_are_parsed_into_events(client: TestClient) -> None:
    """The API page's inline Postfix DSN and feedback loop ARF report about the README's message."""
    files = example_files()
    [(command, _)] = curl_examples(README)
    assert run_curl(client, command).status_code == 200
    bounce = client.post("/v1/feedback/dsn", content=files["bounce.eml"], headers=RFC822)
    assert bounce.status_code == 200, bounce.text
    [event] = bounce.json()["events"]
    assert event | {"event_id": None} == {
        "event_id": None,
        "status": "stored",
        "matched": True,
        "relay": "default",
        "account": "alice@example.net",
        "type": "bounce",
    }
    complaint = client.post("/v1/feedback/arf", content=files["complaint.eml"], headers=RFC822)
    assert complaint.status_code == 200, complaint.text
    [event] = complaint.json()["events"]
    assert (event["type"], event["matched"], event["account"]) == ("complaint", True, "alice@example.net")
    again = client.post("/v1/feedback/arf", content=files["complaint.eml"], headers=RFC822)
    assert again.json()["events"][0]["status"] == "duplicate"


def test_the_webhook_verification_example_accepts_a_signed_delivery() -> None:
    [code] = [body for language, body, _, _ in fenced_blocks((DOCS / "api.md").read_text()) if "def verify" in body]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)  # the documentation's own example
    verify = namespace["verify"]
    secret, body, now = "whsec-docs-test-0123456789", b'{"id": 1, "type": "account.locked"}', int(time.time())
    signature = hmac.new(secret.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert verify(secret, f"t={now},v1={signature}", body)  # type: ignore[operator]
    assert not verify(secret, f"t={now},v1={signature}", body + b" ")  # type: ignore[operator]
    assert not verify(secret, f"t={now - 3_600},v1={signature}", body)  # type: ignore[operator]


# -- commands named in shell blocks exist, with their options


def cli_command(root: Any, words: list[str]) -> tuple[Any, list[str]]:
    """The command a command line names (a typer group's subcommands, followed), and the words after it."""
    command, rest = root, list(words)
    while rest and rest[0] in getattr(command, "commands", {}):
        command = command.commands[rest.pop(0)]
    return command, rest


def simple_commands(tokens: list[str]) -> list[list[str]]:
    """A command line's simple commands (split at |, && and the like), without leading VAR=value assignments."""
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token in OPERATORS:
            while current and re.match(r"^[A-Za-z_]\w*=", current[0]):
                current.pop(0)
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    return commands


def named_commands() -> list[tuple[str, list[str]]]:
    """(page, arguments) of each `outguard ...` and `python -m ...` in the docs' shell blocks and inline code."""
    found = []
    for page in PAGES:
        text = page.read_text()
        shell = [body for language, body, _, _ in fenced_blocks(text) if language in ("sh", "bash", "shell")]
        inline = re.findall(r"`((?:\.venv/bin/)?(?:outguard|python3?) [^`\n]+)`", FENCE.sub("", text))
        for body in shell + inline:
            for tokens in shell_commands(body):
                for words in simple_commands(tokens):
                    program = words[0].split("/")[-1]
                    ours = program == "outguard" and len(words) > 1
                    if ours or (program in ("python", "python3") and words[1:2] == ["-m"]):
                        found.append((page_id(page), words[1:]))
    return found


def test_commands_in_the_docs_exist_with_their_options() -> None:
    problems = []
    root = typer.main.get_command(cli_app)
    for page, words in named_commands():
        if words[0] == "-m":
            if importlib.util.find_spec(words[1]) is None:
                problems.append(f"{page}: python -m {words[1]}: no such module")
            continue
        command, rest = cli_command(root, words)
        if command is root:
            problems.append(f"{page}: outguard {words[0]}: no such command")
            continue
        known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
        for word in rest:
            option = word.split("=", 1)[0]
            if option.startswith("-") and option not in known:
                problems.append(f"{page}: outguard {' '.join(words[: len(words) - len(rest)])}: no option {option}")
    assert not problems, "\n".join(problems)


# -- alerting rules name metrics the service exports


def exported_metric_names() -> set[str]:
    from service.metrics import Metrics

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def test_the_alerting_rules_name_exported_metrics() -> None:
    blocks = [body for language, body, _, _ in fenced_blocks((DOCS / "deploy.md").read_text()) if language == "yaml"]
    rules = [rule for body in blocks for group in yaml.safe_load(body).get("groups", []) for rule in group["rules"]]
    assert rules, "docs/deploy.md shows Prometheus alerting rules"
    exported = exported_metric_names()
    unknown = sorted({m for rule in rules for m in re.findall(r"\boutguard_\w+", rule["expr"]) if m not in exported})
    assert not unknown, f"alerting rules name metrics outguard does not export: {unknown}"
