"""The sentence-transformers files beside an exported encoder, so `SentenceTransformer(OUT)`
embeds as the trained run does: `modules.json` (Transformer -> Pooling [-> Normalize]),
`sentence_bert_config.json` (the max sequence length) and `1_Pooling/config.json`.

Written in the format every sentence-transformers release reads (the `sentence_transformers.
models.*` type names and `pooling_mode_*` keys of the Hub's models, which 5.x and 6.x map onto
their own); without these files sentence-transformers would guess mean pooling and no
normalisation.
"""

import json
import pathlib

_POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                 "max": "pooling_mode_max_tokens"}


def write(out: pathlib.Path, *, hidden_size: int, pooling: str, normalize: bool,
          max_seq_length: int) -> list[str]:
  """Writes the files into the export directory `out`; returns their relative paths."""
  if pooling not in _POOLING_KEYS:
    raise ValueError(f"no sentence-transformers pooling mode for {pooling!r}")
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  if normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
  pooling_config = {"word_embedding_dimension": int(hidden_size),
                    **{key: mode == pooling for mode, key in _POOLING_KEYS.items()},
                    "pooling_mode_mean_sqrt_len_tokens": False,
                    "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
                    "include_prompt": True}
  files = {"modules.json": modules,
           "sentence_bert_config.json": {"max_seq_length": int(max_seq_length),
                                         "do_lower_case": False},
           "1_Pooling/config.json": pooling_config}
  for name, content in files.items():
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(content, indent=2) + "\n")
  if normalize:
    (out / "2_Normalize").mkdir(exist_ok=True)
  return sorted(files) + (["2_Normalize/"] if normalize else [])
