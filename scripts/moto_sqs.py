"""moto's server, with ReceiveMessage made atomic per queue.

moto's threaded server runs two ReceiveMessage calls on one queue side by
side, and both can take the same visible message (its receive loop checks
visibility and marks the message received without a lock). Amazon SQS hands
a message to one receiver per visibility timeout; the conformance suite's
group-sharing case checks exactly that, so the tests run against this
wrapper, which serialises receives on each queue and changes nothing else.
"""

import functools
import sys
import threading

from moto import server
from moto.sqs import models

_locks: dict = {}
_guard = threading.Lock()


def _lock_for(key):
    with _guard:
        return _locks.setdefault(key, threading.Lock())


_receive = models.SQSBackend.receive_message


@functools.wraps(_receive)
def _atomic_receive(self, queue_name, *args, **kwargs):
    with _lock_for((id(self), queue_name)):
        return _receive(self, queue_name, *args, **kwargs)


models.SQSBackend.receive_message = _atomic_receive

if __name__ == "__main__":
    server.main(sys.argv[1:])
