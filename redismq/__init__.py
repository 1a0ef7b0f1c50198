"""redismq: a distributed task and message queue on Redis Streams."""

from .aio import AsyncClient
from .app import App, Subscription
from .client import Client
from .consumer import Consumer
from .context import current_job
from .deadletters import DeadLetter
from .errors import (
    BrokerUnavailable,
    InvalidMessage,
    InvalidURL,
    JobFailed,
    JobNotFound,
    JobTimeout,
    NotReplicated,
    QueueUnavailable,
    RedisMQError,
    ResultExpired,
    Retry,
    StepBusy,
    StepLost,
    TopicExists,
    TopicFull,
    TopicNotFound,
    UnknownTask,
)
from .job import AsyncJob, Job
from .message import Message
from .middleware import Middleware
from .tasks import Task

__all__ = [
    "App",
    "AsyncClient",
    "AsyncJob",
    "BrokerUnavailable",
    "Client",
    "Consumer",
    "DeadLetter",
    "InvalidMessage",
    "InvalidURL",
    "Job",
    "JobFailed",
    "JobNotFound",
    "ResultExpired",
    "JobTimeout",
    "Message",
    "Middleware",
    "RedisMQError",
    "Retry",
    "StepBusy",
    "StepLost",
    "TopicFull",
    "NotReplicated",
    "QueueUnavailable",
    "Subscription",
    "Task",
    "TopicExists",
    "TopicNotFound",
    "UnknownTask",
    "current_job",
]
