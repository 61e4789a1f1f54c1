"""A multi-turn conversation with an export (`qvl-compile chat`): history, attached media, streamed replies.

    session = ChatSession("out")
    session.command("/image cat.png")          # attached to the next message
    for piece in session.reply("What is it?"):
        print(piece, end="")
    for piece in session.reply("What colour?"):  # sees the image and the first answer
        ...

Replies run on the batching engine with one slot, so an image already in the conversation is not encoded
again at the next turn (its embeddings come from the engine's content-hashed cache).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from qvl_compile.errors import QvlError
from qvl_compile.runtime.engine import Engine, EngineConfig
from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.preprocess import load_image
from qvl_compile.runtime.video import VideoProcessorConfig, read_video

DEFAULT_CONTEXT = 4096


class ChatSession:
    def __init__(self, export_dir: str | Path, system: str | None = None, max_new_tokens: int = 256,
                 greedy: bool = False, seed: int | None = None, threads: int = 0):
        self.pipe = Pipeline(export_dir, intra_op_threads=threads)
        context = min(self.pipe.max_context or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        self.engine = Engine(self.pipe, EngineConfig(max_batch=1, context=context, max_waiting=1)).start()
        self.system, self.max_new_tokens, self.seed = system, max_new_tokens, seed
        self.sampling = self.pipe.sampling.greedy() if greedy else self.pipe.sampling
        self.history: list[dict] = []
        self.pending: list[dict] = []  # media parts for the next user message

    def close(self) -> None:
        self.engine.close()

    def command(self, line: str) -> str | None:
        """/image PATH, /video PATH, /reset, /quit -> "quit" for the last, else None."""
        name, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        if name == "/quit":
            return "quit"
        if name == "/reset":
            self.history, self.pending = [], []
            return None
        if name in ("/image", "/video") and not argument:
            raise QvlError(f"{name}: expected a file path after it")
        if name == "/image":
            self.pending.append({"type": "image", "image": load_image(argument)})
        elif name == "/video":
            self.pending.append({"type": "video", "video": read_video(argument,
                                                                      VideoProcessorConfig.from_dir(self.pipe.export_dir))})
        else:
            raise QvlError(f"unknown command {name!r}: expected /image PATH, /video PATH, /reset or /quit")
        return None

    def messages(self, text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": [*self.pending, {"type": "text", "text": text}]}]

    def reply(self, text: str) -> Iterator[str]:
        """Stream the reply to `text` (with any attached media); both join the history when it completes."""
        messages = self.messages(text)
        prepared = self.pipe.prepare_messages(messages)
        room = self.engine.config.context - len(prepared.input_ids)
        if room < 1:
            raise QvlError(f"the conversation has {len(prepared.input_ids)} tokens, more than the context of "
                           f"{self.engine.config.context}; /reset to start over")
        reply = ""
        for update in self.engine.stream(prepared, min(self.max_new_tokens, room), self.sampling, self.seed):
            if update.error:
                raise QvlError(f"generation failed: {update.error}")
            reply += update.text
            if update.text:
                yield update.text
        self.history = [*self.history, messages[-1], {"role": "assistant", "content": reply}]
        self.pending = []
