"""Measure how well an account's template memory tells copies of one template from other content.

    python -m training.template_eval [--corpus .cache/modern-train] [--copies 40]

On the modern-train corpus (ham rendered from real templates with generated fills,
`manifest.tsv` naming each message's template in `source_path`; real spam), every
message is fingerprinted as scoring does (`parse_raw`, `content_features(...).document`,
`Fingerprinter().fingerprint`), and pairs are compared two ways: the full fingerprint
(64 values) and the compact values a template keeps (`templates.compact_values`, 24
values of 8 bits). Pairs are grouped into fills of one template by one sender (the From
domain) in one language (`Content-Language`), the same template from other senders,
other templates of the same sender and of other senders, and spam against ham. Then,
with the corpus's own build scripts (`build/`), each template is rendered `--copies`
times for one shop and sent through a `TemplateMemory`, counting how many templates
the memory needs for them: one is one piece of evidence.

The figures are quoted in `service.fingerprints.templates` and docs/decision.md.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path

import numpy as np

from features.content import content_features
from features.fingerprint import Fingerprinter
from features.message import ParsedMessage, parse_raw
from service.fingerprints.templates import MIN_AGREEING_VALUES, TEMPLATE_VALUES, TemplateMemory, compact_values
from service.settings import PROJECT_ROOT

FULL_THRESHOLD = MIN_AGREEING_VALUES / TEMPLATE_VALUES
# The fields of the corpus builder's fill that make a message one shop's: kept fixed across copies.
SHOP_FIELDS = ("org", "domain", "okind", "cur", "site_url", "app_url", "from_addr")


def _header(parsed: ParsedMessage, name: str) -> str:
    return next((value for key, value in parsed.all_headers if key.lower() == name), "")


def fingerprint_corpus(corpus: Path) -> dict[str, np.ndarray]:
    """Ham fingerprints with their template, sender and language; spam fingerprints."""
    fingerprinter = Fingerprinter()
    ham, templates, senders, languages, spam = [], [], [], [], []
    with (corpus / "manifest.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            parsed = parse_raw((corpus / row["file"]).read_bytes())
            fingerprint = fingerprinter.fingerprint(content_features(parsed).document)
            if fingerprint is None:
                continue
            if row["label"] == "spam":
                spam.append(fingerprint.hashvalues)
                continue
            ham.append(fingerprint.hashvalues)
            templates.append(row["source_path"])
            senders.append(parseaddr(_header(parsed, "from"))[1].rsplit("@", 1)[-1].lower())
            languages.append(_header(parsed, "content-language").strip().lower() or "en")
    return {
        "ham": np.stack(ham),
        "template": np.array(templates),
        "sender": np.array(senders),
        "language": np.array(languages),
        "spam": np.stack(spam),
    }


def _compact(hashvalues: np.ndarray) -> np.ndarray:
    return (hashvalues[:, :TEMPLATE_VALUES] & 0xFF).astype(np.uint8)


def _similarities(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    out = np.empty((len(a), len(b)), dtype=np.float32)
    for start in range(0, len(a), chunk):
        out[start : start + chunk] = (a[start : start + chunk, np.newaxis, :] == b[np.newaxis, :, :]).mean(axis=2)
    return out


def pair_figures(data: dict[str, np.ndarray]) -> Iterator[str]:
    ham, template, sender, language = data["ham"], data["template"], data["sender"], data["language"]
    upper = np.triu_indices(len(ham), 1)

    def same(values: np.ndarray) -> np.ndarray:
        return (values[:, np.newaxis] == values[np.newaxis, :])[upper]

    same_template, same_sender, same_language = same(template), same(sender), same(language)
    groups = {
        "fills: same template, sender, language": same_template & same_sender & same_language,
        "same template, any sender": same_template,
        "other template, same sender": ~same_template & same_sender,
        "other template, other sender": ~same_template & ~same_sender,
    }
    yield f"{len(ham)} ham (fingerprinted), {len(data['spam'])} spam; a match is similarity >= {FULL_THRESHOLD:.3f}"
    yield "| pairs | n | median (full) | match, full 64 values | match, compact 24 x 8 bits |"
    yield "| --- | ---: | ---: | ---: | ---: |"
    full = _similarities(ham, ham)[upper]
    compact = _similarities(_compact(ham), _compact(ham))[upper]
    for name, chosen in groups.items():
        yield (
            f"| {name} | {int(chosen.sum()):,} | {np.median(full[chosen]):.3f} | "
            f"{(full[chosen] >= FULL_THRESHOLD).mean():.2%} | {(compact[chosen] >= FULL_THRESHOLD).mean():.2%} |"
        )
    spam_full = _similarities(data["spam"], ham)
    spam_compact = _similarities(_compact(data["spam"]), _compact(ham))
    n = spam_full.size
    yield (
        f"| spam against ham | {n:,} | {np.median(spam_full):.3f} | "
        f"{int((spam_full >= FULL_THRESHOLD).sum())} ({(spam_full >= FULL_THRESHOLD).mean():.1e}) | "
        f"{int((spam_compact >= FULL_THRESHOLD).sum())} ({(spam_compact >= FULL_THRESHOLD).mean():.1e}) |"
    )
    yield ""
    yield "| compact values agreeing (of 24) | fills match | other template, same sender | spam~ham pairs |"
    yield "| ---: | ---: | ---: | ---: |"
    fills, siblings = groups["fills: same template, sender, language"], groups["other template, same sender"]
    for agreeing in range(6, 13):
        at_least = agreeing / TEMPLATE_VALUES - 1e-6
        yield (
            f"| {agreeing} ({agreeing / TEMPLATE_VALUES:.3f}) | {(compact[fills] >= at_least).mean():.1%} | "
            f"{(compact[siblings] >= at_least).mean():.2%} | {int((spam_compact >= at_least).sum())} |"
        )


def rendered_copies(build: Path, copies: int, seed: int) -> Iterator[tuple[str, list[bytes]]]:
    """Per template, `copies` messages rendered by the corpus builder for one shop, in English."""
    sys.path.insert(0, str(build))
    import engine  # type: ignore[import-not-found]  # the corpus's own (stdlib-only) builder
    import sources  # type: ignore[import-not-found]

    rng = random.Random(seed)
    n = 0
    for _, adapter in sources.ADAPTERS:
        for template in adapter():
            shop: dict[str, object] | None = None
            messages = []
            for _ in range(copies):
                fill = engine.Fill(rng, n, lang="en", kind=template.get("kind"))
                n += 1
                if template.get("from_local"):
                    fill["from_addr"] = template["from_local"] + "@" + fill["from_addr"].split("@")[1]
                if shop is None:
                    shop = {name: fill[name] for name in SHOP_FIELDS}
                fill.update(shop)
                try:
                    rendered = template["render"](fill)
                except Exception:  # the builder skips what it cannot render, and so do we
                    continue
                if rendered is None:
                    continue
                subject, text, html = rendered[:3]
                message = engine.make_message(
                    fill,
                    subject,
                    text=engine.tidy_text(text) if text else None,
                    html_body=engine.tidy_html(html) if html else None,
                    from_name=rendered[3] if len(rendered) > 3 else None,
                    lang="en",
                    extra_headers=rendered[4] if len(rendered) > 4 else None,
                )
                messages.append(message.as_bytes())
            yield template["path"], messages


def memory_figures(build: Path, copies: int, seed: int) -> Iterator[str]:
    fingerprinter = Fingerprinter()
    needed: list[tuple[int, str]] = []
    pairs_matching = pairs = 0
    for path, messages in rendered_copies(build, copies, seed):
        memory = TemplateMemory()
        remembered = 0
        seen = []
        for at, raw in enumerate(messages):
            fingerprint = fingerprinter.fingerprint(content_features(parse_raw(raw)).document)
            if fingerprint is None:
                continue
            values = compact_values(fingerprint)
            match = memory.match(values)
            remembered += match is None
            memory.observe(values, match, float(at), 0.0)
            seen.append(values)
        if remembered:
            needed.append((remembered, path))
            agreeing = (np.stack(seen)[:, np.newaxis, :] == np.stack(seen)[np.newaxis, :, :]).sum(axis=2)
            upper = np.triu_indices(len(seen), 1)
            pairs_matching += int((agreeing[upper] >= MIN_AGREEING_VALUES).sum())
            pairs += len(upper[0])
    counts = np.array([count for count, _ in needed])
    yield f"rendered copies of one template for one shop: {pairs_matching / pairs:.1%} of {pairs:,} pairs match"
    yield (
        f"{len(counts)} templates x {copies} copies for one shop: templates remembered per template "
        f"mean {counts.mean():.2f}, exactly one for {(counts == 1).mean():.1%}, "
        f"90th percentile {np.quantile(counts, 0.9):.0f}, most {counts.max()}"
    )
    for count, path in sorted(needed, reverse=True)[:5]:
        yield f"  {count}: {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=PROJECT_ROOT / ".cache" / "modern-train")
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for line in pair_figures(fingerprint_corpus(args.corpus)):
        print(line)
    if (args.corpus / "build" / "engine.py").is_file():
        for line in memory_figures(args.corpus / "build", args.copies, args.seed):
            print(line)


if __name__ == "__main__":
    main()
