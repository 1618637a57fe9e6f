"""Data quality report: counts, label balance, empty rows, duplicates, leakage, token lengths.

`python -m ftjax.data_report` prints it for a config (see that entry point). The trainer calls
`write(workdir, dataset, tokenizer, cfg)` at the start of a run, which writes
`WORKDIR/data_report.json` and `WORKDIR/data_report.md` (included in `report.md`).

A report is `{"task": ..., "max_length": ..., "splits": {split: stats}, "leakage": [...],
"warnings": [...]}`. Each task registers a function in `SECTIONS` that turns its dataset into
that shape; the statistics and the markdown are shared, so a chat section only has to say
what its texts, labels (if any) and token lengths are.
"""

from __future__ import annotations

import collections
import itertools

import numpy as np

from ftjax import tasks
from ftjax.data import text_norm
from ftjax.metric_writers import write_json
from ftjax.paths import as_path

JSON_FILE = "data_report.json"
MARKDOWN_FILE = "data_report.md"
TRUNCATION_WARNING = 0.05  # warn when more than this share of a split is truncated
IMBALANCE_WARNING = 3.0  # warn when the largest class is this many times the smallest
_CHUNK = 2048


def token_lengths(tokenizer, texts, pairs=None) -> np.ndarray:
  """Untruncated token counts, special tokens included."""
  out = []
  for start in range(0, len(texts), _CHUNK):
    enc = tokenizer(list(texts[start:start + _CHUNK]),
                    list(pairs[start:start + _CHUNK]) if pairs is not None else None,
                    truncation=False, padding=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)
    out.extend(len(ids) for ids in enc["input_ids"])
  return np.asarray(out, np.int64)


def length_stats(lengths: np.ndarray, max_length: int) -> dict:
  if len(lengths) == 0:
    return {"count": 0}
  truncated = int((lengths > max_length).sum())
  return {
      "min": int(lengths.min()), "median": float(np.median(lengths)),
      "p90": float(np.percentile(lengths, 90)), "p99": float(np.percentile(lengths, 99)),
      "max": int(lengths.max()), "mean": float(lengths.mean()),
      "truncated": truncated, "truncated_share": truncated / len(lengths),
  }


def split_stats(keys: list[str], labels: list[int] | None, label_names, lengths: np.ndarray,
                max_length: int) -> dict:
  """Statistics of one split. `keys` are the texts (a pair joined by a separator)."""
  normalized = [text_norm.normalize(k) for k in keys]
  stats = {
      "count": len(keys),
      "empty": sum(1 for k in keys if not k.strip()),
      "duplicates_exact": len(keys) - len(set(keys)),
      "duplicates_normalized": len(keys) - len(set(normalized)),
      "tokens": length_stats(lengths, max_length),
  }
  if labels is not None:
    counts = collections.Counter(labels)
    by_name = {str(name): counts.get(i, 0) for i, name in enumerate(label_names)}
    stats["labels"] = by_name
    stats["label_shares"] = {k: v / max(len(keys), 1) for k, v in by_name.items()}
    labels_of = collections.defaultdict(set)
    for key, label in zip(normalized, labels):
      labels_of[key].add(label)
    stats["conflicting_label_texts"] = sum(1 for s in labels_of.values() if len(s) > 1)
  return stats


def leakage(keys_by_split: dict[str, list[str]], order: list[str]) -> list[dict]:
  """For each pair of splits (a before b): rows of b whose text also occurs in a."""
  out = []
  for a, b in itertools.combinations(order, 2):
    exact_a = set(keys_by_split[a])
    normalized_a = {text_norm.normalize(k) for k in exact_a}
    out.append({
        "split": b, "seen_in": a, "rows": len(keys_by_split[b]),
        "exact": sum(1 for k in keys_by_split[b] if k in exact_a),
        "normalized": sum(1 for k in keys_by_split[b] if text_norm.normalize(k) in normalized_a),
    })
  return out


def split_order(splits, data_cfg) -> list[str]:
  """Training split first, then eval, then test, then the rest alphabetically."""
  preferred = [data_cfg.train_split, data_cfg.eval_split, data_cfg.test_split]
  first = [s for s in preferred if s and s in splits]
  return list(dict.fromkeys(first + sorted(s for s in splits if s not in first)))


def warnings_of(report: dict) -> list[str]:
  out = []
  for split, s in report["splits"].items():
    if s.get("empty"):
      out.append(f"{split}: {s['empty']} empty rows")
    if s.get("duplicates_normalized"):
      out.append(f"{split}: {s['duplicates_normalized']} duplicate rows (normalised text)")
    if s.get("conflicting_label_texts"):
      out.append(f"{split}: {s['conflicting_label_texts']} texts appear with different labels")
    share = s["tokens"].get("truncated_share", 0.0)
    if share > TRUNCATION_WARNING:
      out.append(f"{split}: {share:.1%} of rows are longer than data.max_length="
                 f"{report['max_length']} tokens and get truncated")
    if s.get("answer_in_no_window"):
      out.append(f"{split}: {s['answer_in_no_window']} answers fall whole in no context window "
                 "(raise data.doc_stride or data.max_length): they cannot be learnt")
    if s.get("truncated_words"):
      out.append(f"{split}: {s['truncated_words']} of {s['words']} words are cut off by "
                 f"data.max_length={report['max_length']} (their entities count as missed)")
    counts = [c for c in s.get("labels", {}).values()]
    if counts and min(counts) == 0:
      empty = [k for k, c in s["labels"].items() if c == 0]
      out.append(f"{split}: no examples of class(es) {', '.join(empty)}")
    elif counts and max(counts) / min(counts) > IMBALANCE_WARNING:
      out.append(f"{split}: label imbalance {max(counts) / min(counts):.1f}:1")
  for leak in report["leakage"]:
    if leak["normalized"]:
      out.append(f"leakage: {leak['normalized']} of {leak['rows']} {leak['split']} rows also occur "
                 f"in {leak['seen_in']} ({leak['exact']} exactly)")
  return out


def classification_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `ClassificationData` (needs its `rows(split)` and `label_names`)."""
  order = split_order(dataset.split_sizes, cfg.data)
  splits, keys_by_split = {}, {}
  for split in order:
    rows = dataset.rows(split)
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    keys = texts if pairs is None else [f"{t} || {p}" for t, p in zip(texts, pairs)]
    lengths = token_lengths(tokenizer, texts, pairs)
    splits[split] = split_stats(keys, [r["label"] for r in rows], dataset.label_names, lengths,
                                cfg.data.max_length)
    keys_by_split[split] = keys
  return {"splits": splits, "leakage": leakage(keys_by_split, order),
          "label_names": list(dataset.label_names)}


def chat_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `ChatData`: conversations, skipped ones, rendered token lengths, leakage."""
  del tokenizer  # the dataset renders with its own chat template
  report = _templated_splits(dataset, cfg, lambda split: {"assistant_turns": sum(
      sum(1 for m in c if m["role"] == "assistant") for c in dataset.conversations(split))})
  report["skipped_without_assistant_turn"] = dict(getattr(dataset, "skipped", {}) or {})
  return report


def text_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `TextData`: documents, skipped files, token counts, windows, leakage. A
  long document is cut into windows, not truncated, so nothing counts as truncated."""
  del tokenizer  # the dataset tokenises its documents itself
  def extra(split):
    lengths = dataset.token_lengths(split)
    return {"total_tokens": int(lengths.sum()), "windows": dataset.num_windows(split),
            "windowed_documents": int((lengths > cfg.data.max_length).sum())}
  report = _templated_splits(dataset, cfg, extra)
  for stats in report["splits"].values():
    if stats["tokens"].get("count", 1):
      stats["tokens"].update(truncated=0, truncated_share=0.0)
  report["skipped_files"] = dict(getattr(dataset, "skipped", {}) or {})
  return report


def causal_lm_section(dataset, tokenizer, cfg) -> dict:
  """The report of `sft` data: chat conversations, or plain-text documents."""
  section = chat_section if getattr(dataset, "RENDERS_CHATS", True) else text_section
  return section(dataset, tokenizer, cfg)


def _templated_splits(dataset, cfg, extra) -> dict:
  """Per split of a chat-template dataset: the stats of its rendered texts and token lengths,
  plus `extra(split)`; and the leakage between splits."""
  order = split_order(dataset.split_sizes, cfg.data)
  splits, keys_by_split = {}, {}
  for split in order:
    keys = dataset.texts(split)
    splits[split] = split_stats(keys, None, (), np.asarray(dataset.token_lengths(split)),
                                cfg.data.max_length)
    splits[split].update(extra(split))
    keys_by_split[split] = keys
  return {"splits": splits, "leakage": leakage(keys_by_split, order)}


def preference_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `PreferenceData`: pairs, skipped ones, token lengths (the longer side of
  each pair, rendered), duplicate pairs and leakage (on prompt + chosen + rejected)."""
  del tokenizer  # the dataset renders with its own chat template
  report = _templated_splits(dataset, cfg, lambda split: {
      "distinct_prompts": len({text_norm.normalize(str(p["prompt"]))
                               for p in dataset.pairs(split)}),
      "dropped_prompt_too_long": int(dataset.dropped_prompt_too_long.get(split, 0)),
      "prompt_truncated": int(getattr(dataset, "prompt_truncated", {}).get(split, 0))})
  report["skipped_pairs"] = dict(getattr(dataset, "skipped", {}) or {})
  return report


def prompt_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `PromptData`: prompts, rendered token lengths, those dropped as too long
  for the completion budget, how many carry an answer, duplicates and leakage."""
  del tokenizer  # the dataset renders with its own chat template
  report = _templated_splits(dataset, cfg, lambda split: {
      "with_answer": sum(1 for r in dataset.records(split) if r["answer"]),
      "max_prompt_length": dataset.max_prompt_length,
      "dropped_prompt_too_long": int(dataset.dropped_prompt_too_long.get(split, 0))})
  return report


def pair_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `PairData`: pairs, skipped ones, token lengths (the longer side, before
  truncation), relevance groups, graded pairs, duplicate pairs, and leakage of any text (anchor
  or positive) between splits."""
  order = split_order(dataset.split_sizes, cfg.data)
  splits, texts_by_split = {}, {}
  for split in order:
    rows = dataset.rows(split)
    anchors, positives = [r["anchor"] for r in rows], [r["positive"] for r in rows]
    lengths = np.maximum(token_lengths(tokenizer, anchors), token_lengths(tokenizer, positives))
    stats = split_stats([f"{a} || {p}" for a, p in zip(anchors, positives)], None, (), lengths,
                        cfg.data.max_length)
    sizes = np.bincount(dataset.groups(split)) if rows else np.zeros(0, np.int64)
    stats["groups"] = int(len(sizes))
    stats["pairs_per_group"] = ({"min": int(sizes.min()), "median": float(np.median(sizes)),
                                 "max": int(sizes.max())} if len(sizes) else {})
    stats["graded_pairs"] = int(np.isfinite(dataset.scores(split)).sum())
    splits[split] = stats
    texts_by_split[split] = anchors + positives
  return {"splits": splits, "leakage": leakage(texts_by_split, order),
          "skipped_pairs": dict(getattr(dataset, "skipped", {}) or {})}


def token_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `TokenData`: sentences, words, token lengths before truncation, the words
  `data.max_length` cuts off (their entities count as missed), gold entities per type and tag
  counts, duplicate sentences, and leakage of whole sentences between splits."""
  from ftjax.data import iob2  # pylint: disable=g-import-not-at-top
  order = split_order(dataset.split_sizes, cfg.data)
  splits, keys_by_split = {}, {}
  for split in order:
    rows = dataset.rows(split)
    keys = [" ".join(r["tokens"]) for r in rows]
    stats = split_stats(keys, None, (), token_lengths(tokenizer, keys), cfg.data.max_length)
    entities = collections.Counter(e[0] for r in rows for e in iob2.entities(r["tags"]))
    stats.update(words=sum(len(r["tokens"]) for r in rows),
                 truncated_words=dataset.truncated_words(split),
                 entities=dict(sorted(entities.items())),
                 tags=dict(sorted(collections.Counter(t for r in rows for t in r["tags"]).items())))
    splits[split] = stats
    keys_by_split[split] = keys
  return {"splits": splits, "leakage": leakage(keys_by_split, order),
          "label_names": list(dataset.label_names)}


def choice_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `ChoiceData`: questions, choices per question, how often the right answer
  sits at each position (a position bias a model can learn instead of the task), token lengths
  of the longest (question, choice) row before truncation, duplicates and leakage of questions."""
  order = split_order(dataset.split_sizes, cfg.data)
  splits, keys_by_split = {}, {}
  for split in order:
    rows = dataset.rows(split)
    keys = [f"{r['question']} || {' | '.join(r['choices'])}" for r in rows]
    flat = token_lengths(tokenizer, [r["question"] for r in rows for _ in r["choices"]],
                         [c for r in rows for c in r["choices"]])
    ends = np.cumsum([len(r["choices"]) for r in rows])
    lengths = np.array([flat[e - len(r["choices"]):e].max() for e, r in zip(ends, rows)],
                       np.int64)
    stats = split_stats(keys, None, (), lengths, cfg.data.max_length)
    counts = [len(r["choices"]) for r in rows]
    stats["choices_per_question"] = {"min": min(counts), "max": max(counts)}
    stats["right_answer_position"] = dict(sorted(collections.Counter(
        str(r["label"]) for r in rows).items()))
    splits[split] = stats
    keys_by_split[split] = keys
  return {"splits": splits, "leakage": leakage(keys_by_split, order)}


def qa_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `QAData`: questions, unanswerable ones, context windows per question (and
  how many questions have an answer in no window: cut by the stride they cannot be learnt),
  token lengths of (question, context) before windowing, duplicates and leakage of questions
  with their contexts."""
  order = split_order(dataset.split_sizes, cfg.data)
  splits, keys_by_split = {}, {}
  for split in order:
    rows = dataset.rows(split)
    keys = [f"{r['question']} || {r['context']}" for r in rows]
    stats = split_stats(keys, None, (), token_lengths(
        tokenizer, [r["question"] for r in rows], [r["context"] for r in rows]),
        cfg.data.max_length)
    per_question = collections.Counter(w["example"] for w in dataset.windows(split))
    found = {w["example"] for w in dataset.windows(split) if w["start"] > 0}
    stats["tokens"].update(truncated=0, truncated_share=0.0)  # windows cover the whole context
    stats.update(windows=sum(per_question.values()),
                 max_windows_per_question=max(per_question.values(), default=0),
                 unanswerable=sum(1 for r in rows if not r["answers"]),
                 answer_in_no_window=sum(1 for i, r in enumerate(rows)
                                         if r["answers"] and i not in found))
    splits[split] = stats
    keys_by_split[split] = keys
  return {"splits": splits, "leakage": leakage(keys_by_split, order)}


def target_section(dataset, tokenizer, cfg) -> dict:
  """The report of a `TargetData`: per split the texts' stats, and for multi-label data how often
  each label applies (and rows with none), for regression the targets' range and spread."""
  order = split_order(dataset.split_sizes, cfg.data)
  splits, keys_by_split = {}, {}
  for split in order:
    rows = dataset.rows(split)
    pairs = [r["text_pair"] for r in rows] if any(r["text_pair"] for r in rows) else None
    keys = [r["text"] if pairs is None else f"{r['text']} || {r['text_pair']}" for r in rows]
    stats = split_stats(keys, None, (), token_lengths(tokenizer, [r["text"] for r in rows],
                                                      pairs), cfg.data.max_length)
    targets = dataset.targets(split)
    if dataset.kind == "multi_label":
      stats["label_counts"] = dict(zip(dataset.label_names, targets.sum(0).astype(int).tolist()))
      stats["rows_without_labels"] = int((targets.sum(1) == 0).sum())
    else:
      stats["target"] = {"min": float(targets.min()), "mean": float(targets.mean()),
                         "std": float(targets.std()), "max": float(targets.max())}
    splits[split] = stats
    keys_by_split[split] = keys
  return {"splits": splits, "leakage": leakage(keys_by_split, order),
          "label_names": list(dataset.label_names)}


# objective (`tasks.objective_name`) -> its section
SECTIONS = {"classification": classification_section, "sft": causal_lm_section,
            "preference": preference_section, "reward": preference_section,
            "grpo": prompt_section, "embedding": pair_section,
            "token_classification": token_section, "multiple_choice": choice_section,
            "question_answering": qa_section, "multi_label": target_section,
            "regression": target_section}


def build(dataset, tokenizer, cfg) -> dict:
  """The data report of `dataset` (as the trainer loaded it) for config `cfg`."""
  objective = tasks.objective_name(cfg)
  report = {"task": cfg.model.task, "objective": objective, "data": cfg.data.name,
            "max_length": int(cfg.data.max_length)}
  report.update(SECTIONS[objective](dataset, tokenizer, cfg))
  removed = getattr(dataset, "duplicates_removed", None)
  if removed:
    report["duplicates_removed_at_build"] = removed
  report["warnings"] = warnings_of(report)
  return report


def _fmt(value) -> str:
  if isinstance(value, float):
    return f"{value:.1f}" if value >= 10 or value == int(value) else f"{value:.3g}"
  return str(value)


def markdown(report: dict, heading: str = "##") -> str:
  """The report as a markdown section (tables for splits, labels, lengths and leakage)."""
  lines = [f"{heading} Data", "",
           f"Data `{report['data']}` ({report['task']}), `data.max_length` = {report['max_length']}.", ""]
  splits = report["splits"]
  lines += ["| split | rows | empty | duplicates (exact) | duplicates (normalised) | conflicting labels |",
            "|---|---:|---:|---:|---:|---:|"]
  for name, s in splits.items():
    lines.append(f"| {name} | {s['count']} | {s['empty']} | {s['duplicates_exact']} | "
                 f"{s['duplicates_normalized']} | {s.get('conflicting_label_texts', '-')} |")
  if any("labels" in s for s in splits.values()):
    names = report.get("label_names") or sorted({k for s in splits.values() for k in s["labels"]})
    lines += ["", "| split | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, s in splits.items():
      cells = [f"{s['labels'][n]} ({s['label_shares'][n]:.1%})" for n in names]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "Token lengths (special tokens included, before truncation):", "",
            "| split | min | median | p90 | p99 | max | truncated |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name, s in splits.items():
    t = s["tokens"]
    if t.get("count", 1):
      lines.append(f"| {name} | {t['min']} | {_fmt(t['median'])} | {_fmt(t['p90'])} | {_fmt(t['p99'])} "
                   f"| {t['max']} | {t['truncated']} ({t['truncated_share']:.1%}) |")
  if report["leakage"]:
    lines += ["", "Leakage (rows of a split whose text also occurs in an earlier split):", "",
              "| split | seen in | rows | exact | normalised |", "|---|---|---:|---:|---:|"]
    for leak in report["leakage"]:
      lines.append(f"| {leak['split']} | {leak['seen_in']} | {leak['rows']} | {leak['exact']} | "
                   f"{leak['normalized']} |")
  if report.get("skipped_pairs") and any(report["skipped_pairs"].values()):
    skipped = report["skipped_pairs"]
    lines += ["", "Pairs skipped when the dataset was built: "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()) + "."]
  dropped = {k: s["dropped_prompt_too_long"] for k, s in splits.items()
             if s.get("dropped_prompt_too_long")}
  if dropped:
    lines += ["", "Dropped, their prompt leaving no reply token within data.max_length (GRPO: "
              "within data.max_length minus the completion budget): "
              + ", ".join(f"{k} {v}" for k, v in dropped.items()) + "."]
  cut = {k: s["prompt_truncated"] for k, s in splits.items() if s.get("prompt_truncated")}
  if cut:
    lines += ["", "Pairs whose prompt lost its start to fit data.max_length (data.truncate_prompt): "
              + ", ".join(f"{k} {v}" for k, v in cut.items()) + "."]
  if any("pairs_per_group" in s for s in splits.values()):
    lines += ["", "Relevance groups (a query's relevant documents are its group's positives):", "",
              "| split | groups | pairs per group (min / median / max) | graded pairs |",
              "|---|---:|---:|---:|"]
    for k, s in splits.items():
      g = s["pairs_per_group"]
      sizes = f"{g['min']} / {_fmt(g['median'])} / {g['max']}" if g else "-"
      lines.append(f"| {k} | {s['groups']} | {sizes} | {s['graded_pairs']} |")
  if any("entities" in s for s in splits.values()):
    kinds = sorted({k for s in splits.values() for k in s["entities"]})
    lines += ["", "Tagged sentences (gold entities per type; words cut off by data.max_length "
              "count as predicted O):", "",
              "| split | words | words cut off | " + " | ".join(kinds) + " |",
              "|---|---:|---:|" + "---:|" * len(kinds)]
    for k, s in splits.items():
      lines.append(f"| {k} | {s['words']} | {s['truncated_words']} | "
                   + " | ".join(str(s["entities"].get(kind, 0)) for kind in kinds) + " |")
  if any("right_answer_position" in s for s in splits.values()):
    lines += ["", "Multiple choice (where the right answer sits):", "",
              "| split | choices per question | right answer at position (count) |",
              "|---|---:|---|"]
    for k, s in splits.items():
      c = s["choices_per_question"]
      lines.append(f"| {k} | {c['min']}-{c['max']} | " + ", ".join(
          f"{pos}: {n}" for pos, n in s["right_answer_position"].items()) + " |")
  if any("label_counts" in s for s in splits.values()):
    names = report.get("label_names") or []
    lines += ["", "Multi-label (rows each label applies to):", "",
              "| split | " + " | ".join(names) + " | no label |", "|---|" + "---:|" * (len(names) + 1)]
    for k, s in splits.items():
      lines.append(f"| {k} | " + " | ".join(str(s["label_counts"].get(n, 0)) for n in names)
                   + f" | {s['rows_without_labels']} |")
  if any("target" in s for s in splits.values()):
    lines += ["", "Regression targets:", "", "| split | min | mean | std | max |",
              "|---|---:|---:|---:|---:|"]
    for k, s in splits.items():
      t = s["target"]
      lines.append(f"| {k} | {t['min']:.4g} | {t['mean']:.4g} | {t['std']:.4g} | {t['max']:.4g} |")
  if any("answer_in_no_window" in s for s in splits.values()):
    lines += ["", "Question answering (contexts cut into windows of data.max_length with "
              "data.doc_stride shared tokens):", "",
              "| split | windows | most per question | unanswerable | answer in no window |",
              "|---|---:|---:|---:|---:|"]
    for k, s in splits.items():
      lines.append(f"| {k} | {s['windows']} | {s['max_windows_per_question']} | "
                   f"{s['unanswerable']} | {s['answer_in_no_window']} |")
  if any("windows" in s and "total_tokens" in s for s in splits.values()):
    lines += ["", "Plain text: documents longer than data.max_length are cut into overlapping "
              "windows (every token learnt once), not truncated:", "",
              "| split | tokens | windows | documents cut |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {s['total_tokens']} | {s['windows']} | {s['windowed_documents']} |"
              for k, s in splits.items()]
  if report.get("skipped_files") and any(report["skipped_files"].values()):
    lines += ["", "Files skipped when the dataset was built: "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["skipped_files"].items())
              + "."]
  if report.get("duplicates_removed_at_build"):
    removed = report["duplicates_removed_at_build"]
    lines += ["", "Removed when the dataset was built: " + ", ".join(f"{k} {v}" for k, v in removed.items()) + "."]
  lines += ["", "Warnings:" if report["warnings"] else "No warnings.", ""]
  lines += [f"- {w}" for w in report["warnings"]]
  return "\n".join(lines).rstrip() + "\n"


def write(workdir, dataset, tokenizer, cfg) -> dict | None:
  """Writes `WORKDIR/data_report.json` and `WORKDIR/data_report.md`; returns the report.

  Does nothing (returns None) for a task without a section in `SECTIONS` yet.
  """
  if tasks.objective_name(cfg) not in SECTIONS:
    return None
  report = build(dataset, tokenizer, cfg)
  workdir = as_path(workdir)
  write_json(workdir / JSON_FILE, report)
  (workdir / MARKDOWN_FILE).write_text(markdown(report))
  return report
