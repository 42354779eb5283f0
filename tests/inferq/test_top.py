"""`inferq top` on canned scrapes: parsing, rates and quantiles over an interval, and the rendered view."""

from __future__ import annotations

from rich.console import Console

from inferq.top import Snapshot, buckets, parse, quantile, render, summarize, total

BEFORE = """
# TYPE inferq_queue_depth gauge
inferq_queue_depth{lane="inference"} 3.0
inferq_queue_depth{lane="training"} 0.0
# TYPE inferq_jobs gauge
inferq_jobs{status="queued"} 3.0
inferq_jobs{status="succeeded"} 10.0
# TYPE inferq_batch_size histogram
inferq_batch_size_bucket{kind="classify",le="8.0"} 2.0
inferq_batch_size_bucket{kind="classify",le="+Inf"} 2.0
inferq_batch_size_count{kind="classify"} 2.0
inferq_batch_size_sum{kind="classify"} 8.0
# TYPE inferq_job_duration_seconds histogram
inferq_job_duration_seconds_bucket{kind="classify",outcome="succeeded",le="0.1"} 10.0
inferq_job_duration_seconds_bucket{kind="classify",outcome="succeeded",le="1.0"} 10.0
inferq_job_duration_seconds_bucket{kind="classify",outcome="succeeded",le="+Inf"} 10.0
inferq_job_duration_seconds_count{kind="classify",outcome="succeeded"} 10.0
inferq_job_duration_seconds_sum{kind="classify",outcome="succeeded"} 0.5
# TYPE inferq_images_total counter
inferq_images_total{outcome="succeeded"} 10.0
"""

AFTER = """
# TYPE inferq_queue_depth gauge
inferq_queue_depth{lane="inference"} 250.0
inferq_queue_depth{lane="training"} 1.0
# TYPE inferq_jobs gauge
inferq_jobs{status="queued"} 251.0
inferq_jobs{status="succeeded"} 30.0
# TYPE inferq_batch_size histogram
inferq_batch_size_bucket{kind="classify",le="8.0"} 2.0
inferq_batch_size_bucket{kind="classify",le="+Inf"} 6.0
inferq_batch_size_count{kind="classify"} 6.0
inferq_batch_size_sum{kind="classify"} 88.0
# TYPE inferq_job_duration_seconds histogram
inferq_job_duration_seconds_bucket{kind="classify",outcome="succeeded",le="0.1"} 10.0
inferq_job_duration_seconds_bucket{kind="classify",outcome="succeeded",le="1.0"} 30.0
inferq_job_duration_seconds_bucket{kind="classify",outcome="succeeded",le="+Inf"} 30.0
inferq_job_duration_seconds_count{kind="classify",outcome="succeeded"} 30.0
inferq_job_duration_seconds_sum{kind="classify",outcome="succeeded"} 10.5
# TYPE inferq_images_total counter
inferq_images_total{outcome="succeeded"} 90.0
"""


def test_parse_sums_samples_by_labels() -> None:
    """A scrape parses into samples that `total` sums over the labels left open."""
    samples = parse(AFTER)
    assert total(samples, "inferq_queue_depth") == 251
    assert total(samples, "inferq_queue_depth", lane="inference") == 250
    assert total(samples, "inferq_batch_size_count", kind="classify") == 6


def test_quantile_interpolates_like_histogram_quantile() -> None:
    """The median of 10 observations in (0, 0.1] and 20 in (0.1, 1] lies in the second bucket, linearly."""
    cumulative = buckets(parse(AFTER), "inferq_job_duration_seconds", kind="classify")
    assert quantile(0.5, cumulative) == 0.1 + 0.9 * (15 - 10) / 20
    assert quantile(0.5, []) is None


def test_summary_over_an_interval() -> None:
    """Rates, the batch mean and quantiles cover only what happened between two scrapes 10 s apart."""
    prev = Snapshot(parse(BEFORE), at=100.0, workers=2)
    cur = Snapshot(parse(AFTER), at=110.0, workers=2)
    summary = summarize(cur, prev)
    assert summary.lanes["inference"]["depth"] == 250
    assert summary.kinds["classify"]["finished_per_s"] == 2.0  # 20 jobs in 10 s
    p50 = summary.kinds["classify"]["p50"]
    assert p50 is not None and 0.1 < p50 <= 1.0  # the 20 new jobs all took (0.1, 1] s
    assert summary.batch_mean == 20.0  # 80 images in 4 passes
    assert summary.images_per_s == 8.0
    assert summary.jobs == {"queued": 251, "succeeded": 30}
    assert summary.workers == 2


def test_render_shows_lanes_rates_and_workers() -> None:
    """The rendered view names each lane with its depth, the job rate and latency, the batch mean and workers."""
    summary = summarize(Snapshot(parse(AFTER), at=110.0, workers=2), Snapshot(parse(BEFORE), at=100.0, workers=2))
    console = Console(width=120, record=True)
    console.print(render(summary))
    text = console.export_text()
    assert "inference" in text and "250" in text and "training" in text
    assert "2.0" in text  # jobs/s of classify
    assert "mean batch 20.0" in text
    assert "workers 2" in text
    assert "queued 251" in text


def test_first_view_says_rates_need_a_second_scrape() -> None:
    """A single scrape still renders depths, and says rates come from the second one."""
    console = Console(width=120, record=True)
    console.print(render(summarize(Snapshot(parse(AFTER), at=1.0))))
    text = console.export_text()
    assert "250" in text and "rates appear from the second scrape" in text
