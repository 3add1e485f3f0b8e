import io

from test_agent_fixtures import QUESTIONS, KeywordSearcher, ScriptedGenerator

from searchr1.agent.config import AgentConfig
from searchr1.agent.rollout import run_agent
from searchr1.ask import main, print_trace


def test_print_trace_shows_every_turn():
    rollout = run_agent(QUESTIONS[:1], ScriptedGenerator(), KeywordSearcher(), AgentConfig(), progress=False)[0]
    out = io.StringIO()
    print_trace(rollout, out)
    text = out.getvalue()
    assert text.index("===== Assistant (turn 1) =====") < text.index("===== Tool =====") < \
        text.index("===== Assistant (turn 2) =====")
    assert "answer: Velmora Quist" in text and "queries: In which city was Velmora Quist born?" in text


def test_bad_config_and_index_are_refused(tmp_path, capsys):
    assert main(["q", "--index", str(tmp_path), "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["q", "--index", str(tmp_path / "missing"), "--config", "configs/tiny.yaml"]) == 2
    assert "not a directory" in capsys.readouterr().err
