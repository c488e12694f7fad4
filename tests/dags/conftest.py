"""Fixtures for DAG tests: one migrated throwaway Airflow home, the DAP emulator, moto's SNS and SQS."""

from __future__ import annotations

import json
from dataclasses import dataclass

import boto3
import pytest

from local_dap.airflow_home import AirflowEnvironment
from tests.support.moto_server import AWS_TEST_CLIENT_KWARGS, aws_test_environment, reset

# What the lifecycle test (test_lifecycle.py) covered, told in the session's summary.
SHAPES_COVERED = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    covered = config.stash.get(SHAPES_COVERED, None)
    if covered:
        terminalreporter.section("Table shapes through the lifecycle")
        terminalreporter.write_line(covered)


@pytest.fixture(scope="session")
def airflow_env() -> AirflowEnvironment:
    """A throwaway AIRFLOW_HOME with SQLite, ``airflow db migrate`` run once."""
    environment = AirflowEnvironment.create()
    yield environment
    environment.remove()


@dataclass
class Sns:
    """An SNS topic with an SQS queue subscribed, on a moto server."""

    endpoint_url: str
    topic_arn: str
    queue_url: str
    sqs: object

    @property
    def env(self) -> dict[str, str]:
        return aws_test_environment(self.endpoint_url)

    @property
    def connection(self) -> dict:
        return {"conn_type": "aws", "extra": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"}}

    def received(self) -> list[dict]:
        """The SNS envelopes delivered to the queue since the last call (their Message decoded)."""
        envelopes = []
        while True:
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            if not answer.get("Messages"):
                return envelopes
            for message in answer["Messages"]:
                envelope = json.loads(message["Body"])
                envelope["facts"] = json.loads(envelope["Message"])
                envelopes.append(envelope)
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture(scope="module")
def sns(moto_endpoint: str) -> Sns:
    """A fresh SNS topic with an SQS queue subscribed, on the session's (emptied) moto server."""
    reset(moto_endpoint)
    sns_client = boto3.client("sns", endpoint_url=moto_endpoint, **AWS_TEST_CLIENT_KWARGS)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, **AWS_TEST_CLIENT_KWARGS)
    topic_arn = sns_client.create_topic(Name="cd2-replica")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="cd2-replica-events")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
    sns_client.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=attributes["QueueArn"])
    return Sns(moto_endpoint, topic_arn, queue_url, sqs)
