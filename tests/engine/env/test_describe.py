"""Cell descriptions: the template describer, an OpenAI-compatible endpoint (a real local HTTP server)
and writing Description rows into a real SQLite file."""

from __future__ import annotations

import csv
import itertools
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from sqlalchemy import select

from db import open_database
from db.models import Cell, Dataset, Description
from db.queries import store_dataset
from engine.data.city import POI_CATEGORIES, CityConfig, generate_city
from engine.env.describe import (
    CityStats,
    OpenAIDescriber,
    TemplateDescriber,
    chat_completions_url,
    clean_answer,
    describe_cells,
    fit_words,
    friendly_name,
    make_describer,
    ratio_words,
)
from engine.errors import InputError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def city():
    return generate_city(CityConfig(users=5, cells=400))


@pytest.fixture(scope="module")
def stats(city) -> CityStats:
    return CityStats.from_counts(city.cell_poi, city.poi_categories)


def counts(**named: int) -> list[int]:
    """A 17-category vector from keyword names: counts(Business_affairs=80) etc."""
    out = [0] * len(POI_CATEGORIES)
    for key, value in named.items():
        out[POI_CATEGORIES.index(key.replace("_", " "))] = value
    return out


def words(text: str) -> int:
    return len(text.split())


# --- City statistics ------------------------------------------------------------------------------


def test_city_stats_are_the_city_averages(city, stats):
    totals = city.cell_poi.sum(1)
    assert stats.cells == 400 and stats.categories == tuple(POI_CATEGORIES)
    assert stats.mean_total == pytest.approx(totals.mean())
    assert stats.mean == pytest.approx(tuple(city.cell_poi.mean(0)))
    assert sum(stats.share) == pytest.approx(1.0)
    assert stats.empty_cells == int((totals == 0).sum())
    assert list(stats.total_quantiles) == sorted(stats.total_quantiles)
    assert stats.median_total == pytest.approx(np.median(totals[totals > 0]))


def test_city_stats_reject_a_matrix_that_does_not_fit_the_categories():
    with pytest.raises(InputError, match="categories"):
        CityStats.from_counts(np.zeros((3, 4)), ["a", "b"])


def test_a_data_set_with_a_single_poi_theme_is_described_without_a_crash():
    """Issue 20: valid data declaring one POI column (or only restaurants and shops) made the describer divide
    by zero: a theme that is the whole city's mix cannot stand out, so it is not a cell's character."""
    for categories, rows in ((["Restaurant"], [[5], [0], [40]]), (["Restaurant", "Shopping"], [[5, 2], [0, 9]])):
        stats = CityStats.from_counts(np.array(rows), categories)
        texts = [TemplateDescriber().text(row, stats) for row in rows]
        assert all(isinstance(t, str) and t for t in texts)


# --- Template describer ---------------------------------------------------------------------------


def test_template_is_deterministic(city, stats):
    again = CityStats.from_counts(city.cell_poi.copy(), list(city.poi_categories))
    for row in city.cell_poi[:50]:
        first = TemplateDescriber().describe(row, stats)
        assert first.generator == "template" and first.error is None and first.model
        assert TemplateDescriber().text(list(row), again) == first.text


def test_an_office_heavy_cell_is_an_office_district_that_mentions_business(stats):
    text = TemplateDescriber().text(counts(Business_affairs=180, Restaurant=20, Hotel=10, Residence=3), stats)
    assert "office district" in text
    assert "business premises (180" in text  # the count of the top category is quoted
    assert re.search(r"(twice|times)", text)  # a ratio in words
    assert "few homes" in text.lower()  # a notable absence


def test_a_cell_with_a_transport_hub_mentions_it(stats):
    hub = TemplateDescriber().text(counts(Transportation_hub=4, Hotel=6, Restaurant=8, Shopping=8), stats)
    assert hub.lower().startswith(("a ", "this ", "an ")) or hub[0].isupper()
    assert "transport hub" in hub
    # One station among homes: the place stays residential, but the station is worth a mention.
    homes = TemplateDescriber().text(counts(Residence=30, Life_service=6, Shopping=3, Transportation_hub=1), stats)
    assert "residential neighbourhood" in homes and "transport hub" in homes


def test_a_park_cell_mentions_scenic_or_green(stats):
    text = TemplateDescriber().text(counts(Scenic_spot=9, Sports=3, Culture=2, Restaurant=1), stats)
    assert "park or scenic area" in text and re.search(r"scenic|green", text.split(":", 1)[-1])


def test_factories_and_schools_name_industrial_zones_and_campuses(stats):
    assert "industrial zone" in TemplateDescriber().text(counts(Factory=14, Landmark=4, Other=3), stats)
    campus = TemplateDescriber().text(counts(Education=15, Culture=4, Sports=4, Restaurant=5), stats)
    assert "campus" in campus and "schools and colleges" in campus


def test_an_empty_cell_says_so(stats):
    text = TemplateDescriber().text([0] * len(POI_CATEGORIES), stats)
    assert "no recorded points of interest" in text.lower()
    assert words(text) <= 40


def test_density_words_follow_the_totals(stats):
    mix = np.array(counts(Residence=5, Business_affairs=4, Shopping=2, Restaurant=2, Life_service=1))
    order = ["very sparse", "sparse", "moderately dense", "dense", "very dense"]

    def density(text: str) -> str:
        found = [w for w in order if re.search(rf"(^|[^a-z]){w}([^a-z]|$)", text.lower())]
        return max(found, key=len)

    seen = [order.index(density(TemplateDescriber().text(list(mix * k), stats))) for k in (1, 2, 3, 6, 20, 60)]
    assert seen == sorted(seen) and seen[0] <= 1 and seen[-1] == 4
    assert density(TemplateDescriber().text(counts(Residence=1, Shopping=1), stats)) == "very sparse"


def test_a_very_sparse_cell_lists_its_few_points_of_interest_instead_of_shares(stats):
    text = TemplateDescriber().text(counts(Shopping=1, Residence=2), stats)
    assert "two homes" in text and "one shop" in text and "times" not in text


def test_descriptions_vary_across_a_city_and_stay_short(city, stats):
    texts = [TemplateDescriber().text(row, stats) for row in city.cell_poi]
    assert len(set(texts)) >= 0.9 * len(texts)
    assert max(words(t) for t in texts) <= 80
    openings = {re.sub(r"[\d,]+", "#", t.split(".")[0]).split(" ")[0] for t in texts}
    assert len(openings) >= 3  # sentence structure varies, not only the numbers


def test_friendly_names_and_ratio_words():
    assert friendly_name("Business affairs") == "business premises"
    assert friendly_name("Transportation hub") == "transport hubs"
    assert friendly_name("Transportation hub", 1) == "transport hub"
    assert friendly_name("Entertainment and leisure") == "entertainment venues"
    assert friendly_name("Dining & Cuisine") == "dining & cuisine"
    assert [ratio_words(r) for r in (1.5, 2.1, 3.2, 4.6, 30)] == [
        "about one and a half times",
        "about twice",
        "about three times",
        "about five times",
        "more than ten times",
    ]


def test_the_llmapp_taxonomy_is_described_with_its_own_names(shared_data):
    path = shared_data / "llmapp_sample" / "location.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        columns = [i for i, name in enumerate(header) if name.startswith("poi_")]
        rows = [[int(float(row[i])) for i in columns] for row in itertools.islice(reader, 600)]
    categories = [header[i][len("poi_") :] for i in columns]
    stats = CityStats.from_counts(np.array(rows), categories)
    texts = [TemplateDescriber().text(row, stats) for row in rows]
    assert len(set(texts)) >= 0.9 * len(texts) and max(words(t) for t in texts) <= 80
    lowered = [name.lower() for name in categories]
    assert any(name in " ".join(texts) for name in lowered)  # its own names, lower-cased
    bank = [0] * len(categories)
    bank[categories.index("Financial Institutions")] = 150
    bank[categories.index("Companies & Enterprises")] = 120
    bank[categories.index("Dining & Cuisine")] = 30
    assert "office district" in TemplateDescriber().text(bank, stats)


def test_an_unknown_taxonomy_gets_a_label_from_its_own_category_names():
    rng = np.random.default_rng(0)
    stats = CityStats.from_counts(rng.poisson(5, size=(200, 3)), ["Alpha", "Beta Things", "Gamma"])
    text = TemplateDescriber().text([2, 40, 3], stats)
    assert "area rich in beta things" in text and "beta things (40" in text


# --- OpenAI-compatible endpoint (a real local server) ---------------------------------------------


class FakeLLM:
    """A chat-completions server whose answers are scripted: a list of (status, body, delay_s)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, float]] = []
        self.default: tuple[int, object, float] = (200, _answer("A busy office district."), 0.0)
        self.requests: list[dict] = []
        self.release = threading.Event()  # lets sleeping handlers go at teardown
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                status, answer, delay = fake.script.pop(0) if fake.script else fake.default
                if delay:
                    fake.release.wait(delay)
                raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _answer(content: object) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


@pytest.fixture
def llm(request):
    fake = FakeLLM()
    request.addfinalizer(fake.close)
    return fake


def _describer(llm: FakeLLM, **options) -> OpenAIDescriber:
    settings = {"model": "test-model", "timeout_s": 2, "retries": 2, "backoff_s": 0.01} | options
    return OpenAIDescriber(llm.base_url, **settings)


OFFICE = counts(Business_affairs=120, Restaurant=15, Residence=4)


def test_llm_success_stores_text_model_and_prompt(llm, stats, monkeypatch):
    monkeypatch.setenv("LSDM_LLM_API_KEY", "sekrit")
    llm.default = (200, _answer("A dense office district with many business premises and restaurants."), 0)
    result = _describer(llm).describe(OFFICE, stats)
    assert result.generator == "openai" and result.model == "test-model" and result.error is None
    assert result.text == "A dense office district with many business premises and restaurants."
    assert "Business affairs: 120" in result.prompt and "Restaurant: 15" in result.prompt
    assert f"city average {stats.mean_total:.1f}" in result.prompt
    (request,) = llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sekrit"
    messages = request["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == result.prompt
    assert request["body"]["model"] == "test-model" and "70 words" in messages[1]["content"]


def test_no_authorization_header_without_the_key_and_v1_urls_are_accepted(llm, stats, monkeypatch):
    monkeypatch.delenv("LSDM_LLM_API_KEY", raising=False)
    describer = OpenAIDescriber(llm.base_url + "/v1/", "m", timeout_s=2)
    assert describer.describe(OFFICE, stats).generator == "openai"
    assert "Authorization" not in llm.requests[0]["headers"]
    assert llm.requests[0]["path"] == "/v1/chat/completions"


def test_base_url_rule():
    assert chat_completions_url("http://h:11434") == "http://h:11434/v1/chat/completions"
    assert chat_completions_url("http://h:11434/v1/") == "http://h:11434/v1/chat/completions"
    assert chat_completions_url("https://x.org/api/v1beta") == "https://x.org/api/v1beta/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    with pytest.raises(InputError, match="base_url"):
        chat_completions_url("localhost:11434")


def test_llm_retries_on_5xx_then_succeeds(llm, stats):
    llm.script = [(500, {"error": "busy"}, 0), (503, b"overloaded", 0)]
    llm.default = (200, _answer("An office district."), 0)
    result = _describer(llm, retries=2).describe(OFFICE, stats)
    assert result.generator == "openai" and result.text == "An office district."
    assert len(llm.requests) == 3


def test_llm_always_failing_falls_back_to_the_template(llm, stats):
    llm.default = (500, {"error": {"message": "boom"}}, 0)
    result = _describer(llm, retries=2).describe(OFFICE, stats)
    assert result.generator == "template-fallback" and "HTTP 500" in result.error and "3 attempts" in result.error
    assert result.text == TemplateDescriber().text(OFFICE, stats)
    assert result.model == "test-model" and "Business affairs: 120" in result.prompt  # the prompt is kept
    assert len(llm.requests) == 3


def test_llm_timeout_falls_back_within_a_bounded_time(llm, stats):
    llm.default = (200, _answer("too late"), 5.0)
    started = time.monotonic()
    result = _describer(llm, timeout_s=0.3, retries=1, backoff_s=0.05).describe(OFFICE, stats)
    assert time.monotonic() - started < 3
    assert result.generator == "template-fallback" and "no answer within 0.3 s" in result.error
    assert len(llm.requests) == 2


def test_unreachable_endpoint_falls_back_and_the_breaker_stops_asking(stats):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    describer = OpenAIDescriber(f"http://127.0.0.1:{port}", "m", retries=1, backoff_s=0.01, timeout_s=1, breaker=2)
    results = [describer.describe(OFFICE, stats) for _ in range(3)]
    assert all(r.generator == "template-fallback" for r in results)
    assert "cannot reach" in results[0].error or "connection" in results[0].error
    assert results[2].error.startswith("skipped: endpoint failed for 2 cells in a row")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"<html>not json</html>", "not JSON"),
        ({"choices": []}, "choices[0].message.content"),
        ({"choices": [{"message": {"role": "assistant"}}]}, "choices[0].message.content"),
        ({"data": 1}, "choices[0].message.content"),
        (_answer(""), "empty"),
        (_answer("  **  ``` ```  "), "empty"),
        (_answer(None), "not text"),
        (_answer("I'm sorry, but I can't help with that."), "refused"),
        (_answer(" ".join(["word"] * 400)), "far over"),
    ],
)
def test_malformed_answers_fall_back_with_a_reason_and_are_not_retried(llm, stats, answer, reason):
    llm.default = (200, answer, 0)
    result = _describer(llm).describe(OFFICE, stats)
    assert result.generator == "template-fallback" and reason in result.error
    assert result.text == TemplateDescriber().text(OFFICE, stats)
    assert len(llm.requests) == 1


def test_client_errors_are_not_retried(llm, stats):
    llm.default = (404, {"error": {"message": "model 'test-model' not found"}}, 0)
    result = _describer(llm).describe(OFFICE, stats)
    assert result.generator == "template-fallback" and "HTTP 404" in result.error and "not found" in result.error
    assert len(llm.requests) == 1


def test_markdown_and_preambles_are_stripped_and_long_answers_cut_to_sentences(llm, stats):
    llm.default = (
        200,
        _answer(
            "<think>counting</think>Here is the description:\n\n**An office district.**\n- Many *restaurants* nearby."
        ),
        0,
    )
    assert _describer(llm).describe(OFFICE, stats).text == "An office district. Many restaurants nearby."
    long = " ".join(f"Sentence number {i} has six words." for i in range(20))  # 120 words
    llm.default = (200, _answer(long), 0)
    text = _describer(llm, max_words=70).describe(OFFICE, stats).text
    assert words(text) <= 70 and text.endswith(".") and text.startswith("Sentence number 0")
    assert clean_answer('"Quoted paragraph."') == "Quoted paragraph."
    assert fit_words("one two three four five", 3) == "one two three."


def test_make_describer():
    assert isinstance(make_describer("template"), TemplateDescriber)
    assert isinstance(make_describer("template", base_url=None, model=None), TemplateDescriber)
    with pytest.raises(InputError, match="--describer"):
        make_describer("gpt")
    with pytest.raises(InputError, match="--describer"):
        make_describer("template", base_url="http://x")
    with pytest.raises(InputError, match="base_url"):
        make_describer("openai", model="m")
    described = make_describer("openai", base_url="http://127.0.0.1:9", model="m", timeout_s=1)
    assert isinstance(described, OpenAIDescriber) and described.url == "http://127.0.0.1:9/v1/chat/completions"


# --- Writing descriptions -------------------------------------------------------------------------


def test_describe_cells_writes_keeps_and_regenerates(db_path, llm):
    database = open_database(str(db_path))
    try:
        with database.write_session() as session, session.begin():
            dataset = store_dataset(session, generate_city(CityConfig(users=5, cells=40, seed=3)))
            dataset_id = dataset.id
        messages: list[str] = []
        with database.write_session() as session, session.begin():
            result = describe_cells(
                session, session.get(Dataset, dataset_id), make_describer("template"), progress=messages.append
            )
        assert (result["described"], result["kept"], result["fallbacks"]) == (40, 0, 0)
        assert messages and messages[-1].startswith("descriptions: 40/40")

        with database.session() as session:
            rows = session.scalars(select(Description).join(Cell).where(Cell.dataset_id == dataset_id)).all()
            assert len(rows) == 40 and {r.generator for r in rows} == {"template"}
            first = {r.cell_id: (r.text, r.created_at) for r in rows}

        with database.write_session() as session, session.begin():
            result = describe_cells(session, session.get(Dataset, dataset_id), make_describer("template"))
        assert (result["described"], result["kept"], result["fallbacks"]) == (0, 40, 0)

        # Regenerating with an endpoint that always fails: every cell rewritten, as recorded fallbacks.
        llm.default = (500, {"error": "down"}, 0)
        describer = _describer(llm, retries=0)
        with database.write_session() as session, session.begin():
            result = describe_cells(session, session.get(Dataset, dataset_id), describer, regenerate=True)
        assert (result["described"], result["kept"], result["fallbacks"]) == (40, 0, 40)
        assert sum(result["fallback_reasons"].values()) == 40
        with database.session() as session:
            rows = session.scalars(select(Description).join(Cell).where(Cell.dataset_id == dataset_id)).all()
            assert len(rows) == 40 and {r.generator for r in rows} == {"template-fallback"}
            assert all(r.model == "test-model" and "Total:" in r.prompt for r in rows)
            assert {r.cell_id: r.text for r in rows} == {k: v[0] for k, v in first.items()}  # same template text
            assert all(r.created_at >= first[r.cell_id][1] for r in rows)
        assert len(llm.requests) == 3  # the breaker stopped asking after 3 failed cells
    finally:
        database.dispose()
