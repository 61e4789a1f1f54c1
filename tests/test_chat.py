"""`qvl-compile chat` on the tiny model's export (torch-free): turns, attached media, commands, errors."""
import subprocess
import sys

import numpy as np
import pytest

from qvl_compile.tasks.shapes import make_case

pytestmark = pytest.mark.torch_free


def test_chat_turns_media_and_commands(golden_exports, tmp_path):
    from qvl_compile.runtime.pipeline import Pipeline

    export = golden_exports["fp32"]
    count, color = (make_case(task, np.random.default_rng(41)) for task in ("count", "color"))
    count.images[0].save(tmp_path / "count.png")
    color.images[0].save(tmp_path / "color.png")
    script = "\n".join([f"/image {tmp_path / 'count.png'}", count.prompt, "/reset", "/bogus", "/image /nowhere.png",
                        f"/image {tmp_path / 'color.png'}", color.prompt, "/quit", "never read"]) + "\n"
    result = subprocess.run([sys.executable, "-m", "qvl_compile.cli", "chat", str(export), "--greedy"], input=script,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pipe = Pipeline(export)
    expected = [pipe.generate(case.prompt, images=case.images, greedy=True, max_new_tokens=256).text
                for case in (count, color)]  # /reset between them: each reply is a fresh conversation's
    assert result.stdout.splitlines() == expected
    assert "unknown command '/bogus'" in result.stderr and "/nowhere.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_turn_sees_the_first_and_reuses_the_image_embeddings(golden_exports):
    from qvl_compile.runtime.chat import ChatSession

    case = make_case("count", np.random.default_rng(42))
    session = ChatSession(golden_exports["fp32"], greedy=True, max_new_tokens=16)
    try:
        session.pending.append({"type": "image", "image": case.images[0]})
        first = "".join(session.reply(case.prompt))
        second = "".join(session.reply("What color is the shape?"))
        conversation = [{"role": "user", "content": [{"type": "image", "image": case.images[0]},
                                                     {"type": "text", "text": case.prompt}]},
                        {"role": "assistant", "content": first},
                        {"role": "user", "content": [{"type": "text", "text": "What color is the shape?"}]}]
        alone = list(session.pipe.stream_messages(conversation, 16, greedy=True))[-1][1]
        assert second == alone and session.history == conversation + [{"role": "assistant", "content": second}]
        assert (session.engine.stats.vision_cache_misses, session.engine.stats.vision_cache_hits) == (1, 1)
    finally:
        session.close()
