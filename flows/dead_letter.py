"""dead-letter: record a job run that failed or crashed for good. Started by a server-side automation, so it
runs even when the failed run's own process died."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from roadie.params import FlowRunId
from roadie.settings import get_settings
from tasks.failures import dead_letter
from tasks.failures.tasks import notify_block, notify_webhook, read_failed_run, record_failed_job


@flow(name="dead-letter", flow_run_name="dead-letter-{flow_run_id}")
def record_dead_letter(flow_run_id: FlowRunId) -> dict:
    """Write the failed_jobs row, emit `roadie.job.dead-lettered`, notify; the first time only for the last two."""
    log = get_run_logger()
    failed = read_failed_run(flow_run_id)
    letter = record_failed_job(failed)
    log.warning(
        "%s run %s ended %s after %d attempt(s): %s",
        failed.deployment_name or failed.flow_name,
        failed.flow_run_name,
        failed.state,
        failed.attempts,
        failed.error,
    )
    if letter.first_time:
        dead_letter.emit(letter)
        settings = get_settings()
        if settings.dead_letter_webhook_url:
            notify_webhook(letter, settings.dead_letter_webhook_url)
        if settings.dead_letter_notify_block:
            notify_block(letter, settings.dead_letter_notify_block)
    create_markdown_artifact(
        key="dead-letter",
        description=f"failed job {letter.id}",
        markdown=(
            f"### {failed.deployment_name or failed.flow_name}: `{failed.flow_run_name}` {failed.state}\n\n"
            f"| | |\n|---|---|\n| attempts | {failed.attempts} |\n"
            f"| failed at | {failed.failed_at:%Y-%m-%d %H:%M:%S} UTC |\n"
            f"| parameters | `{failed.parameters}` |\n| failed job | `{letter.id}` |\n\n"
            f"**error:** {failed.error}\n\nRe-queue: `roadie failed --retry {letter.id}`"
        ),
    )
    return dead_letter.payload(letter)
