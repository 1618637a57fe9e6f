"""Readers of what a run sends to its trackers, for tests: TensorBoard event files and the W&B
run log (`run-<id>.wandb`). Neither tensorboard nor wandb ships a reader we can use (wandb 0.2x
writes the log from its Go core and has no Python reader), so the two framings are decoded here
and the records parsed with the libraries' own protobufs."""

import json
import pathlib
import struct


def tensorboard_events(workdir) -> list:
  """Every `Event` of the workdir's event files, in file order (TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for path in sorted(pathlib.Path(workdir).glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      pos += 12  # length + its CRC
      event = event_pb2.Event()
      event.ParseFromString(data[pos:pos + length])
      events.append(event)
      pos += length + 4  # data + its CRC
  return events


def hparams_sessions(workdir) -> list[tuple[str, object]]:
  """The HParams plugin's records: ("start", SessionStartInfo) / ("end", SessionEndInfo)."""
  from tensorboardX.proto import plugin_hparams_pb2  # pylint: disable=g-import-not-at-top
  found = []
  for event in tensorboard_events(workdir):
    for value in event.summary.value:
      if value.metadata.plugin_data.plugin_name == "hparams":
        data = plugin_hparams_pb2.HParamsPluginData()
        data.ParseFromString(value.metadata.plugin_data.content)
        kind = data.WhichOneof("data")
        found.append(("start" if kind == "session_start_info" else "end", getattr(data, kind)))
  return found


_BLOCK, _HEADER, _RECORD_HEADER = 32768, 7, 7  # the W&B log: LevelDB-style 32 KiB blocks


def wandb_records(run_dir) -> list:
  """Every `Record` of the W&B run log in an (offline) run directory."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  (path,) = pathlib.Path(run_dir).glob("run-*.wandb")
  data = path.read_bytes()
  assert data[:4] == b":W&B", f"{path} is not a W&B run log"
  records, pos, pending = [], _HEADER, b""
  while pos + _RECORD_HEADER <= len(data):
    if _BLOCK - pos % _BLOCK < _RECORD_HEADER:  # the block's tail is padding
      pos += _BLOCK - pos % _BLOCK
      continue
    length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
    pending += data[pos + 7:pos + 7 + length]
    pos += _RECORD_HEADER + length
    if kind in (1, 4):  # a full record, or the last piece of one
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
    elif kind == 0:  # zero padding at the end
      break
  return records


def _put(tree: dict, item) -> None:
  """Sets an item's value at its key, or at its nested key path (media: {"_type": ...})."""
  *parents, leaf = list(item.nested_key) or [item.key]
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = json.loads(item.value_json)


def wandb_history(run_dir) -> list[dict]:
  """The logged rows: {"_step": step, key: value, ...} per `log` call."""
  rows = []
  for record in wandb_records(run_dir):
    if record.WhichOneof("record_type") == "history":
      row = {}
      for item in record.history.item:
        _put(row, item)
      rows.append(row)
  return rows


def wandb_summary(run_dir) -> dict:
  """The run's final summary (the updates of all its summary records), as {key: value}."""
  summary = {}
  for record in wandb_records(run_dir):
    if record.WhichOneof("record_type") == "summary":
      for item in record.summary.update:
        _put(summary, item)
  return summary
