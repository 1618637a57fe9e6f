"""Chat with a run's model in the terminal.

  python -m ftjax.chat --workdir DIR [--checkpoint latest|best|base|STEP] [--system TEXT]
      [--temperature 0.7] [--top_p 0.95] [--top_k 0] [--max_new_tokens 256] [--seed 0]
      [--prompt TEXT]

Loads the run's config and checkpoint as `ftjax.evaluate` does (`base`: the untrained model),
renders the conversation with the run's chat template, and prints the reply token by token as
`ftjax.generate.stream` makes it, stopping at any end-of-turn token the checkpoint declares.
`/reset` starts a new conversation, `/exit` (or end of input) quits. `--prompt` answers one
message and exits (for scripts); `--temperature 0` is greedy. The run's data files must still be
where the run read them (the template and tokenizer come from the run's data setup).
"""

from __future__ import annotations

import itertools
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from ftjax import generate, train
from ftjax.data import chat_template, tokenization
from ftjax.errors import UserError, exit_on_user_error, parse_absl_flags

FLAGS = flags.FLAGS
HELP = "/reset starts a new conversation, /exit quits"
# Prompts are padded to a multiple of this: a growing conversation recompiles the prefill and
# decode step once per 64 tokens, not once per 8.
PROMPT_MULTIPLE = 64


class Chat:
  """A conversation with one checkpoint of a run: `reply(text, out)` streams the answer."""

  def __init__(self, workdir: str, checkpoint: str = "latest", *, system: str = "",
               temperature: float = 0.7, top_p: float = 0.95, top_k: int = 0,
               max_new_tokens: int = 256, seed: int = 0):
    cfg = train.load_workdir_config(workdir)
    if cfg.model.task != "causal_lm":
      raise UserError(f"workdir '{workdir}' holds a {cfg.model.task} run; the chat command needs "
                      "a causal language model (model.task=causal_lm)")
    exp = train.build_experiment(cfg, optimizer=False)
    state, self.step = train.restore_state(exp, workdir, train.parse_checkpoint(str(checkpoint)))
    self.model = train.model_from_state(exp, state)
    self.tokenizer, self.template = exp.dataset.tokenizer, exp.dataset.template
    self.stops = tokenization.stop_token_ids(exp.model_path, self.tokenizer, self.template)
    self.pad_id = exp.dataset.pad_id
    self.system = [{"role": "system", "content": system}] if system else []
    self.settings = dict(temperature=temperature, top_p=top_p, top_k=top_k,
                         max_new_tokens=max_new_tokens)
    self.seed, self.turns = seed, 0
    self.messages = list(self.system)

  def reset(self) -> None:
    self.messages = list(self.system)

  def reply(self, text: str, out=sys.stdout) -> str:
    """Appends the user's `text`, writes the reply to `out` as it is generated, returns it."""
    self.messages.append({"role": "user", "content": text})
    try:  # the template and the prompt's length are checked before anything is printed
      prompt = chat_template.render(self.tokenizer, self.messages, self.template,
                                    add_generation_prompt=True)
      ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
      stream = generate.stream(self.model, ids, stop_token_ids=self.stops,
                               pad_token_id=self.pad_id, seed=self.seed + self.turns,
                               prompt_multiple=PROMPT_MULTIPLE, **self.settings)
      first = next(stream)
    except UserError:
      self.messages.pop()  # a message that could not be answered is not kept
      raise
    new, shown = [], ""
    for token in itertools.chain([first], stream):
      if token in self.stops:
        break
      new.append(token)
      decoded = self.tokenizer.decode(new, skip_special_tokens=True)
      if decoded.endswith("\ufffd"):  # a character cut between tokens: wait for the rest
        continue
      out.write(decoded[len(shown):])
      out.flush()
      shown = decoded
    reply = self.tokenizer.decode(new, skip_special_tokens=True)
    out.write(reply[len(shown):] + "\n")
    out.flush()
    self.turns += 1
    self.messages.append({"role": "assistant", "content": reply})
    return reply


def repl(chat: Chat, read=input, out=sys.stdout) -> None:
  """Reads user lines until `/exit` or end of input; answers each."""
  while True:
    try:
      line = read("> ").strip()
    except EOFError:
      out.write("\n")
      return
    if line == "/exit":
      return
    if line == "/reset":
      chat.reset()
      out.write("(new conversation)\n")
    elif line.startswith("/"):
      out.write(f"unknown command {line.split()[0]}; {HELP}\n")
    elif line:
      try:
        chat.reply(line, out)
      except UserError as e:  # e.g. the conversation outgrew the model: say so, keep chatting
        out.write(f"error: {e}; /reset starts a new conversation\n")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("ftjax").setLevel(logging.WARNING)
  with exit_on_user_error():
    chat = Chat(FLAGS.workdir, FLAGS.checkpoint, system=FLAGS.system,
                temperature=FLAGS.temperature, top_p=FLAGS.top_p, top_k=FLAGS.top_k,
                max_new_tokens=FLAGS.max_new_tokens, seed=FLAGS.seed)
    if FLAGS.prompt is not None:
      chat.reply(FLAGS.prompt)
      return
    print(f"ftjax chat: {FLAGS.workdir}, checkpoint {FLAGS.checkpoint} (step {chat.step}); {HELP}",
          flush=True)
    repl(chat)


def run() -> None:
  flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json and checkpoints/).",
                      required=True)
  flags.DEFINE_string("checkpoint", "latest", "latest, best, base (the untrained model) or a step.")
  flags.DEFINE_string("system", "", "A system message opening every conversation.")
  flags.DEFINE_string("prompt", None, "Answer this one message and exit.")
  flags.DEFINE_float("temperature", 0.7, "Sampling temperature; 0 is greedy.")
  flags.DEFINE_float("top_p", 0.95, "Nucleus sampling mass (1 = off).")
  flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens when sampling (0 = all).")
  flags.DEFINE_integer("max_new_tokens", 256, "Most tokens per reply.")
  flags.DEFINE_integer("seed", 0, "Sampling seed (reply i uses seed + i).")
  app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
  run()
