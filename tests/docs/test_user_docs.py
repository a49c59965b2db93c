"""The user documentation in docs/: every doc the README and the proto point to exists, the
metrics page lists exactly what the server exports, and the semantics page's order of
truncations is the registry's."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from samplerd.sampling.registry import STRATEGY_LABELS, TRUNCATIONS
from samplerd.service.metrics import CODES, METHODS, Metrics

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PROTO = REPO / "proto" / "samplerd" / "v1" / "sampler.proto"
METRICS_DOC = REPO / "docs" / "metrics.md"
SEMANTICS_DOC = REPO / "docs" / "semantics.md"
# Notes of the development team that users never get; the product must not point at them.
TEAM_NOTES = ("DESIGN.md", "SAMPLERS.md")
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def named_doc_paths(text: str) -> set[str]:
    """Repository paths of the form docs/NAME.md, and relative markdown links to .md files."""
    paths = set(re.findall(r"(?<![\w/.])docs/[\w./-]+\.md", text))
    paths |= {link for link in re.findall(r"\]\(([\w./-]+\.md)\)", text) if "://" not in link}
    return paths


def test_every_doc_the_readme_and_the_proto_name_exists() -> None:
    for source in (README, PROTO):
        named = named_doc_paths(source.read_text())
        assert "docs/semantics.md" in named and "docs/metrics.md" in named, source
        for path in named:
            assert (REPO / path).is_file(), f"{source.name} names {path}, which does not exist"


def test_links_between_the_docs_resolve() -> None:
    for doc in (REPO / "docs").glob("*.md"):
        for link in named_doc_paths(doc.read_text()):
            target = REPO / link if link.startswith("docs/") else doc.parent / link
            assert target.is_file(), f"{doc.name} links {link}"


def test_nothing_a_user_reads_points_at_the_team_notes() -> None:
    user_facing = [README, *REPO.glob("proto/**/*.proto"), *REPO.glob("docs/*.md"),
                   *REPO.glob("sampling/**/*.py"), *REPO.glob("service/*.py"), *REPO.glob("workers/**/*.py")]
    for path in user_facing:
        text = path.read_text()
        for note in TEAM_NOTES:
            assert note not in text, f"{path.relative_to(REPO)} mentions {note}"


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the tables of docs/metrics.md."""
    rows = re.findall(r"^\| `(samplerd_\w+)` \| (\w+) \| ([^|]+) \|", METRICS_DOC.read_text(), re.MULTILINE)
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def exported_metrics() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) of the samplerd_ families a fresh server's registry exposes."""
    from prometheus_client import generate_latest

    found = {}
    for family in text_string_to_metric_families(generate_latest(Metrics().registry).decode()):
        if not family.name.startswith("samplerd_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {key for sample in family.samples for key in sample.labels} - {"le"}
        found[name] = (family.type, labels)
    return found


def test_the_metrics_page_lists_exactly_the_exported_metrics_with_their_types_and_labels() -> None:
    documented = documented_metrics()
    exported = exported_metrics()
    assert len(documented) >= 16
    assert documented == exported


def test_the_metrics_page_lists_every_label_value() -> None:
    text = METRICS_DOC.read_text()

    def row(label: str) -> set[str]:
        line = next(line for line in text.splitlines() if line.startswith(f"| `{label}` |"))
        return set(re.findall(r"`(\w+)`", line.split("|")[2]))

    assert row("strategy") == set(STRATEGY_LABELS)
    assert row("code") == set(CODES)
    assert row("method") == set(METHODS)


def test_the_example_queries_name_only_exported_series() -> None:
    series = {name + suffix for name, (kind, _) in exported_metrics().items()
              for suffix in _SUFFIXES[kind]} | set(exported_metrics())
    queries = re.findall(r"```promql\n(.*?)```", METRICS_DOC.read_text(), re.DOTALL)
    assert len(queries) >= 4
    named = {name for query in queries for name in re.findall(r"\bsamplerd_\w+", query)}
    assert named and named <= series, named - series
    assert any("histogram_quantile(0.99" in q and "samplerd_sample_duration_seconds_bucket" in q for q in queries)
    assert any("samplerd_entropy_nats" in q for q in queries)


_DOC_NAMES = {"top-nσ": "top_n_sigma", "top-k": "top_k", "optimal-k": "optimal_k", "entropy top-k": "entropy_top_k",
              "statistical top-k": "statistical_top_k", "top-H": "top_h", "top-p": "top_p", "min-p": "min_p",
              "typical": "typical", "epsilon": "epsilon", "eta": "eta", "XTC": "xtc"}


def test_the_semantics_page_gives_the_registrys_order_of_truncations() -> None:
    text = " ".join(SEMANTICS_DOC.read_text().split())
    listed = re.search(r"truncations, in this order: ([^;]+);", text).group(1)
    order = [_DOC_NAMES[name.strip()] for name in listed.split(",")]
    assert order == [s.name for s in TRUNCATIONS if not s.name.startswith("mirostat")]
