"""Write a bundle's model card: data, split, metrics, features, limits, and how to re-measure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.spec import BY_NAME
from models.bundle import ModelBundle

CARD_FILE = "MODEL_CARD.md"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _importance_rows(bundle: ModelBundle, top: int = 15) -> str:
    gains = bundle.booster.feature_importance(importance_type="gain")
    names = bundle.model_features
    total = max(float(gains.sum()), 1e-12)
    return "\n".join(
        f"| `{names[i]}` | {gains[i] / total:.3f} | {BY_NAME[names[i]].description} |"
        for i in np.argsort(gains)[::-1][:top]
    )


def _split_rows(data: dict) -> str:
    rows, spam = data.get("rows", {}), data.get("spam_rows", {})
    return "\n".join(f"| {s} | {rows.get(s, 0)} | {spam.get(s, 0)} |" for s in ("train", "calibration", "test"))


def render_model_card(bundle: ModelBundle) -> str:
    test = bundle.metrics.get("test", {})
    data = bundle.data
    importance_rows = _importance_rows(bundle)
    gains = bundle.booster.feature_importance(importance_type="gain")
    names = bundle.model_features
    unused = ", ".join(f"`{names[i]}`" for i in range(len(names)) if gains[i] == 0) or "none"
    modern = bundle.metrics.get("modern_mail", {})
    modern_rows = "\n".join(
        f"| {name.replace('_', ' ')} | {'spam' if v['label'] else 'ham'} | {v['spam_probability']:.3f} |"
        for name, v in sorted(modern.items(), key=lambda kv: (kv[1]["label"], kv[0]))
    )
    replay_section = _replay_section(bundle.metrics.get("account_replay"))
    replay_section += _replay_section(bundle.metrics.get("account_replay_modern"), modern=True)
    heldout_section = _heldout_section(bundle.metrics.get("modern_heldout"))
    split_rows = _split_rows(data)
    threshold_rows = "\n".join(
        f"| {name} | {test[f'{name}_threshold']} | {_pct(test[f'{name}_recall'])} | {_pct(test[f'{name}_fpr'])} |"
        for name in ("hold", "reject")
        if f"{name}_threshold" in test
    )
    return f"""# Model card: `{bundle.version}`

The content model outguard ships with. It scores one outgoing message from what the
sender wrote: text, subject, sender-controlled headers, links, HTML and MIME shape.

- **Model**: LightGBM ({bundle.params.get("num_boost_round")} trees, {bundle.params.get("num_leaves")} leaves)
  over {len(bundle.model_features)} content features, one of which is a hashed word and
  character n-gram text model ({bundle.params.get("text_model")}) fed out-of-fold in training.
- **Calibration**: Platt scaling on the calibration split, at equal class priors (the
  corpus is {100 * bundle.train_spam_prior:.0f}% spam; outbound traffic far less). A probability is the
  message's own evidence: logit(p) is its log-likelihood ratio, spam against ham, which the
  account decision adds up. Calibration figures below are on the test split reweighted
  to 50/50.
- **Feature spec**: version `{bundle.feature_spec_version}` (`features/spec.py`).

## Data

{data.get("corpora", "")}.

- Split: {data.get("split", "")}.
- De-duplication: {data.get("dedup", "")}.
- Signatures: {data.get("signatures", "not used")}.
- Leakage: only sender-controlled headers reach a feature (`features/message.py`,
  `SENDER_HEADERS`); `Received`, `Return-Path`, `X-Spam-*`, `List-*`, `X-Mailman-*`,
  `Delivered-To` and the rest of the receiving side's headers are never read.

| split | messages | spam |
| --- | --- | --- |
{split_rows}

## Held-out test (TREC, newest 20% by delivery order)

| metric | value |
| --- | --- |
| ROC AUC | {test.get("roc_auc", float("nan")):.4f} |
| PR AUC | {test.get("pr_auc", float("nan")):.4f} |
| spam recall at 0.1% false-positive rate | {_pct(test.get("recall_at_fpr_0.1pct", 0))} |
| spam recall at 1% false-positive rate | {_pct(test.get("recall_at_fpr_1pct", 0))} |
| Brier score | {test.get("brier", float("nan")):.4f} |
| expected calibration error (10 bins) | {test.get("ece", float("nan")):.4f} |
| text model alone, ROC AUC | {test.get("text_model_only_roc_auc", float("nan")):.4f} |

At the service's default action thresholds:

| action | probability at least | spam caught | ham flagged |
| --- | --- | --- | --- |
{threshold_rows}

Re-measure: `outguard evaluate` (reads this bundle and the corpora, prints the same table).

{heldout_section}## A hand-written check set

A small check set written for this project (`training/modern_mail.py`), not drawn from
any corpus: what a relay sends today. Too small for a rate; it shows where the corpus
model is blind.

| message | truth | spam probability |
| --- | --- | --- |
{modern_rows}

One message is still never enough to bounce mail (see the action policy in the README):
the account-level signals and retraining on the service's own traffic back the content
score up.

{replay_section}## What drives it (share of total gain, top 15)

| feature | gain share | meaning |
| --- | --- | --- |
{importance_rows}

Never split on (zero gain; present in the spec, no signal the model used): {unused}.

## Limits

- Present-day ham is 285 templates of 20 open-source projects, filled by one program
  and re-sent here in the shapes of seven mailer libraries; person-to-person mail of
  today is absent (the 2007 corpora stand in for it). Present-day spam is 97% phishing.
- phishing_pot is CC BY-NC 4.0 (non-commercial). To ship a model without it, train
  with modern-train's phishing removed (`outguard train --no-modern`, or drop the
  `rf-peixoto/phishing_pot` rows in `training.modern_dataset`).
- Behaviour and engagement features are computed and logged for every scored message
  but this corpus model does not read them: the corpora carry no accounts. Retraining
  from the service's own events will.
"""


def _heldout_section(heldout: dict | None) -> str:
    if not heldout:
        return ""
    hold = heldout["hold_threshold"]
    recall = heldout["spam_recall"]
    recall_rows = "\n".join(
        f"| {name.replace('_', ' ')} | {v['messages']:,} "
        f"| {_pct(v['recall_at_1pct_fp'])} | {_pct(v['recall_at_hold'])} |"
        for name, v in recall.items()
    )

    def ham_rows(rows: list[dict], key: str) -> str:
        return "\n".join(
            f"| {r[key].replace('_', ' ')} | {r['messages']} | {r['held']} ({_pct(r['held_share'])}) "
            f"| {r['median']:.3f} | {r['max']:.3f} |"
            for r in rows
        )

    return f"""## Present-day mail, whole projects held out

modern-train (`training/modern_corpus.py`: ham re-sent in the shapes of real mailer
libraries, corpus artefacts undone) scored out of fold: its ham is cut into
{heldout["folds"]} folds by source project, its spam by file, and each fold is scored by a model
trained exactly like this one on the corpora plus the other folds. No project's templates
are seen in training when its mail is scored. {heldout["ham"]:,} ham, {heldout["spam"]:,} spam.

| measure | value |
| --- | --- |
| ROC AUC | {heldout["roc_auc"]:.4f} |
| ham held (p >= {hold}) | {_pct(heldout["ham_held_share"])} |
| ham, median spam probability | {heldout["ham_median"]:.3f} |
| threshold that flags 1% of held-out ham | {heldout["threshold_at_1pct_fp"]:.4f} |

| spam | messages | recall at 1% false positives | recall at the hold threshold |
| --- | --- | --- | --- |
{recall_rows}

Ham by category:

| category | messages | held | median | highest |
| --- | --- | --- | --- | --- |
{ham_rows(heldout["by_category"], "category")}

Ham by source project (each scored by a model that never saw the project):

| project | messages | held | median | highest |
| --- | --- | --- | --- | --- |
{ham_rows(heldout["by_source"], "source_repo")}

Re-measure: `outguard train` (it runs this evaluation and writes this card; about
{heldout.get("seconds", 0) / 60:.0f} minutes on 2 cores for the {heldout["folds"]} extra trainings).

"""


def _replay_section(replay: dict | None, modern: bool = False) -> str:
    if not replay:
        return ""
    delay = replay["spam_accepted_before_lock"]
    minutes = replay.get("minutes_to_lock") or {}
    auc = replay.get("message_level", {})
    never = replay.get("never_caught", [])
    rate = replay["false_locks_per_1000_account_days"]
    title = "present-day content" if modern else "2007 corpus content"
    pool = "modern-train's eval pool of templates and spam" if modern else "the corpus test split"
    return f"""## Per account: a simulated provider, replayed ({title})

`{replay.get("command", "")}` on an evaluation seed whose content the model never trained
on ({pool}): {replay["messages"]:,} messages ({replay["spam_messages"]:,} spam),
{replay["legitimate_accounts"]:,} legitimate accounts over {replay["legitimate_account_days"]:,} account-days,
{replay["compromised_identities"]} compromised identities.

| measure | reached | goal |
| --- | --- | --- |
| spam messages accepted before lock, median | {_num(delay["median"])} | at most 3 |
| spam messages accepted before lock, p90 | {_num(delay["p90"])} | at most 10 |
| spam messages accepted before lock, max | {delay["max"]} | |
| minutes from compromise to lock, median / p90 | {_num(minutes.get("median"))} / {_num(minutes.get("p90"))} | |
| compromised identities never caught | {len(never)} | |
| false locks per 1,000 legitimate account-days | {rate:.2f} ({replay["false_locks"]} accounts) | at most 0.5 |
| message-level ROC AUC / PR AUC | {_num(auc.get("roc_auc"), 4)} / {_num(auc.get("pr_auc"), 4)} | |
{_fraud_row(replay.get("fraud_signups"))}
A simulator is not a provider: read these as what the account decision adds on top of
the content scores, not as a promise for any provider's traffic.

"""


def _fraud_row(fraud: dict | None) -> str:
    if not fraud or not fraud.get("identities"):
        return ""
    delay = fraud["spam_accepted_before_lock"]
    return (
        f"| fraudulent sign-ups caught; spam accepted before lock, median / max | {fraud['caught']} of "
        f"{fraud['identities']}; {_num(delay['median'])} / {delay['max']} | all |\n"
    )


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_event_model_card(bundle: ModelBundle) -> str:
    """The card of a model retrained from the service's own events (`training.train_events`)."""
    test = bundle.metrics.get("test", {})
    champion = bundle.metrics.get("champion_test", {})
    data = bundle.data
    names = bundle.model_features
    importance_rows = _importance_rows(bundle)
    split_rows = _split_rows(data)
    metric_rows = "\n".join(
        f"| {label} | {_num(test.get(key), 4)} | {_num(champion.get(key), 4) if champion else 'n/a'} |"
        for label, key in (
            ("ROC AUC", "roc_auc"),
            ("PR AUC", "pr_auc"),
            ("spam recall at 0.1% false-positive rate", "recall_at_fpr_0.1pct"),
            ("spam recall at 1% false-positive rate", "recall_at_fpr_1pct"),
            ("expected calibration error (10 bins)", "ece"),
        )
    )
    replay_section = _replay_section(bundle.metrics.get("account_replay"))
    gate = bundle.metrics.get("gate")
    gate_section = (
        f"## Promotion gate\n\n{'Passed' if gate['passed'] else 'Refused'}: " + "; ".join(gate["reasons"]) + ".\n\n"
        if gate
        else ""
    )
    return f"""# Model card: `{bundle.version}`

A model retrained from the service's own events: each scored message's feature vector
as it was logged, labelled by what followed (feedback, admin verdicts, locks).

- **Model**: LightGBM ({bundle.params.get("num_boost_round")} trees, {bundle.params.get("num_leaves")} leaves)
  over {len(names)} features: content, the hashed text model ({bundle.params.get("text_model")}),
  account behaviour, engagement and fingerprints. Monotone where the direction is known:
  {", ".join(f"`{k}` {'+' if v > 0 else '-'}" for k, v in sorted(bundle.params.get("monotone", {}).items()))}.
- **Training engine**: {data.get("engine", "local")}.
- **Calibration**: Platt scaling on the validation split at equal class priors.
- **Feature spec**: version `{bundle.feature_spec_version}` (`features/spec.py`).

## Data

{data.get("source", "")}; dataset `{data.get("dataset", "")}`.

- Split: {data.get("split", "")}.
- Labels: admin verdicts; complaints (spam), replies and not-spam reports (ham); the
  spam-like mail of accounts confirmed compromised; the mail of accounts cleared after a
  false lock (ham); otherwise, mail nobody objected to once its feedback window closed
  (ham). See `training/events.py`.

| split | messages | spam |
| --- | --- | --- |
{split_rows}

## Held-out test (the newest messages), against the champion on the same rows

| metric | this model | champion |
| --- | --- | --- |
{metric_rows}

{gate_section}{replay_section}## What drives it (share of total gain, top 15)

| feature | gain share | meaning |
| --- | --- | --- |
{importance_rows}

## Limits

- Labels come from what the service and its admins saw: spam nobody complained about
  from an account that was never caught is labelled ham, and locks made on this
  model's own scores feed its next training (a feedback loop the admin verdicts and the
  gate's held-out replay keep in check).
"""


def write_model_card(bundle: ModelBundle, directory: Path) -> Path:
    path = directory / CARD_FILE
    from_events = bundle.data.get("kind") == "events"
    path.write_text(render_event_model_card(bundle) if from_events else render_model_card(bundle))
    return path
