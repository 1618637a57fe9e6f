"""`python -m ftjax.chat`: a terminal chat with a run's model.

Driven through a pseudo-terminal (`pexpect`) as a user would: the banner, a streamed reply,
/reset, an unknown command, /exit. A one-shot `--prompt` prints what `generate` gives for the
rendered conversation (greedy), and a second turn carries the first one's history. A
classification workdir is one `error:` line.
"""

import io
import os
import pathlib
import subprocess
import sys

import pexpect
import pytest

from ftjax import chat as chat_lib
from ftjax import generate, train
from ftjax.config import base_config
from ftjax.data import chat_template
from ftjax.metric_writers import write_json
from tiny_assets import make_conversations, make_tiny_llama, write_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat")
  c = base_config()
  c.model.checkpoint = str(make_tiny_llama(root / "llama"))
  c.model.task = "causal_lm"
  c.method.name = "lora"
  c.data.name = "chat_files"
  c.data.files.train = str(write_jsonl(root / "train.jsonl", make_conversations(16, 0)))
  c.data.files.validation = str(write_jsonl(root / "dev.jsonl", make_conversations(4, 1)))
  c.data.test_split = ""
  c.data.max_length = 32
  c.data.bucket_boundaries = (32,)
  c.train.steps = 4
  c.train.batch_size = 4
  c.optimizer.lr = 5e-2
  c.eval.every_steps = 4
  c.eval.metric, c.eval.mode = "loss", "min"
  c.eval.num_samples = 0
  c.checkpoint.every_steps = 4
  workdir = root / "run"
  train.train_and_evaluate(c, str(workdir))
  return workdir


def _cli(workdir, *extra):
  return [sys.executable, "-m", "ftjax.chat", f"--workdir={workdir}", "--max_new_tokens=6", *extra]


def test_one_shot_prompt_prints_the_greedy_reply_and_turns_keep_history(sft_run):
  chat = chat_lib.Chat(str(sft_run), temperature=0.0, max_new_tokens=6)
  messages = [{"role": "user", "content": "hello how are you ?"}]
  ids = chat.tokenizer(chat_template.render(chat.tokenizer, messages, chat.template,
                                            add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
  (want,) = generate.generate(chat.model, [ids], max_new_tokens=6, stop_token_ids=chat.stops,
                              pad_token_id=chat.pad_id, prompt_multiple=chat_lib.PROMPT_MULTIPLE)
  want_text = chat.tokenizer.decode([t for t in want if t not in chat.stops],
                                    skip_special_tokens=True)
  out = io.StringIO()
  assert chat.reply("hello how are you ?", out) == want_text
  assert out.getvalue() == want_text + "\n"
  chat.reply("help me with python !", io.StringIO())  # the second turn sees the first
  assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
  chat.reset()
  assert chat.messages == []
  # A message that cannot be answered is an error line; the chat goes on without it.
  chat.settings["max_new_tokens"] = 0
  lines, out = iter(["hello how are you ?", "/exit"]), io.StringIO()
  chat_lib.repl(chat, read=lambda _: next(lines), out=out)
  assert out.getvalue() == ("error: max_new_tokens must be >= 1, got 0; /reset starts a new "
                            "conversation\n")
  assert chat.messages == []
  result = subprocess.run(_cli(sft_run, "--temperature=0", "--prompt=hello how are you ?"),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout == want_text + "\n"


def test_interactive_session_through_a_terminal(sft_run):
  child = pexpect.spawn(sys.executable, _cli(sft_run, "--seed=3")[1:], cwd=str(REPO), env=ENV,
                        encoding="utf-8", timeout=240)
  try:
    child.expect(r"ftjax chat: .*checkpoint latest \(step 4\); /reset starts a new conversation")
    child.expect_exact("> ")
    child.sendline("hello how are you ?")
    child.expect_exact("\r\n> ")  # a streamed reply, then the prompt again
    child.sendline("/reset")
    child.expect_exact("(new conversation)")
    child.sendline("/bogus")
    child.expect_exact("unknown command /bogus")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
  finally:
    child.close()
  assert child.exitstatus == 0


def test_a_classification_workdir_is_one_error_line(tmp_path, tiny_bert_dir):
  cfg = base_config()
  cfg.model.checkpoint = str(tiny_bert_dir)
  write_json(tmp_path / "config.json", cfg.to_dict())
  result = subprocess.run(_cli(tmp_path), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: workdir '{tmp_path}' holds a classification run; the chat command needs a causal "
      "language model (model.task=causal_lm)")
