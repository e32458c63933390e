"""One live session with one peer: the read loop and everything keyed by callback id.

A :class:`Connection` sits on a :class:`~kite.transport.session.Session` and speaks dnode:

* outgoing calls get a response callback id and a pending reply receiver (a
  :class:`ReplyWaiter` for a blocking ``tell()``, an :class:`gevent.event.AsyncResult`
  for ``go()``); a disconnect fails every pending call at once;
* incoming method calls run in the greenlet that read them (no hand-off, no
  switch) -- the *leader*. Should a handler block (a ``tell()`` back into its
  caller, I/O, a sleep), the hub hands reading to a pooled worker greenlet (the
  next leader) at once, so responses keep flowing; the old leader finishes its
  call and leaves. At most ``max_concurrent`` calls run at a time (``1`` keeps
  arrival order); extra calls wait in a queue;
* incoming callback invocations run in arrival order on one serial worker;
* responses are handled on the read loop itself (cheap, no greenlet).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, overload

import gevent
from gevent import getcurrent
from gevent.event import AsyncResult, Event
from gevent.hub import Waiter

from . import workers
from .errors import DisconnectError, InvalidResponseError, LocalProtocolError, ProtocolError, SendError, from_wire
from .transport.session import Session, SessionClosed
from .wire import dnode

log = logging.getLogger("kite.connection")

#: Default number of calls one connection may run at once. Enough to keep two
#: cores busy with blocking handlers, small enough that one greedy peer cannot
#: create thousands of greenlets.
DEFAULT_MAX_CONCURRENT_CALLS = 64
#: Calls waiting for a worker before the read loop stops reading from the peer
#: (back-pressure on a flooding peer; responses still flow below this bound).
MAX_QUEUED_CALLS = 4096
#: Calls a leader runs back to back, its peer's input never running dry, before it
#: lets the event loop go round (other connections, timers) once.
INLINE_CALLS_PER_TURN = 64

#: Messages a leader reads back to back without running one inline (calls queued for the
#: workers, responses, callbacks) before it lets the loop go round once: a peer's burst of
#: thousands of calls is read in slices, so other connections are not stalled while it lands.
MESSAGES_PER_TURN = 64

#: What a leader sleeps to let the loop go round: any positive time waits for its next iteration.
_NEXT_TURN = 1e-6

DISCONNECT_MESSAGE = "Remote kite has disconnected"

#: The keys of :meth:`Connection.stats`.
CONNECTION_STATS = ("pending_calls", "running_calls", "queued_calls", "send_backlog")

CallHandler = Callable[["Connection", str, list[Any]], None]


class ReplyWaiter:
    """What a caller blocked on one reply waits on: half the cost of an
    :class:`~gevent.event.AsyncResult` (no links, one waiting greenlet).

    ``set``/``set_exception`` are called once, from any greenlet; ``get`` by the
    one greenlet that made the call.
    """

    __slots__ = ("_waiter", "_loop")

    def __init__(self) -> None:
        self._waiter: Waiter[Any] = Waiter()
        self._loop = self._waiter.hub.loop

    def set(self, value: Any) -> None:
        self._loop.run_callback(self._waiter.switch, value)

    def set_exception(self, exc: BaseException) -> None:
        self._loop.run_callback(self._waiter.throw, exc)

    def get(self) -> Any:
        """Block for the reply's result; raises its error (wrap in a :class:`gevent.Timeout` to bound it)."""
        return self._waiter.get()


if TYPE_CHECKING:
    # AsyncResult is not subscriptable at run time: the parametrised alias is the checker's only.
    Reply: TypeAlias = AsyncResult[Any] | ReplyWaiter
else:
    #: Either kind of reply receiver.
    Reply = AsyncResult | ReplyWaiter

#: A reply receiver the caller supplies (and gets back as it is).
_R = TypeVar("_R", bound=Reply)


class Connection:
    """The dnode state of one session. Created and owned by a :class:`~kite.client.Client`."""

    #: Where the characters of messages received and sent are added up (``received``/``sent``),
    #: set by :mod:`kite.metrics` when the kite's metrics are on.
    traffic: Any = None

    def __init__(
        self,
        session: Session,
        scrubber: dnode.Scrubber,
        on_call: CallHandler,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT_CALLS,
    ):
        self.session = session
        self.scrubber = scrubber
        self._on_call = on_call
        self._max_workers = max(1, max_concurrent)
        self._workers = 0
        self._calls: deque[dnode.Message] = deque()
        self._queue_drained = Event()
        self._queue_drained.set()
        self._callbacks: deque[tuple[Callable[..., Any], list[Any]]] = deque()
        self._callback_worker_running = False
        #: Pending outgoing calls: response callback id -> (result, method name).
        self._pending: dict[int, tuple[Reply, str]] = {}
        self.closed = False
        self._loop = gevent.get_hub().loop
        self._leader: Any = None  # the greenlet reading now
        self._leader_busy = False  # the leader is inside a call
        self._check_scheduled = False  # _check_leader is due: the hub has not run since
        self._inline_this_turn = 0  # calls run inline since _check_leader was scheduled
        self._ended = Event()
        self._refuse: CallHandler | None = None  # set while draining: answers new calls instead

    def refuse_calls(self, refuse: CallHandler | None) -> None:
        """From now on hand every new incoming call to ``refuse(conn, method, arguments)``, in the read
        loop, instead of running or queueing it (``None``: serve them again). Calls already running
        or queued go on. :meth:`kite.Kite.shutdown` answers them "kite is shutting down"."""
        self._refuse = refuse

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Block until the session has ended and every pending call failed; ``False`` after ``timeout``."""
        return self._ended.wait(timeout)

    def stats(self) -> dict[str, int]:
        """Counts for leak checks and monitoring (:data:`CONNECTION_STATS`): outgoing calls awaiting
        their reply, incoming calls running and queued, characters queued for the peer."""
        return {
            "pending_calls": len(self._pending),
            "running_calls": self._workers,
            "queued_calls": len(self._calls),
            "send_backlog": self.session.backlog(),
        }

    # -- sending -----------------------------------------------------------

    def send_message(self, method: str | int, arguments: list[Any], callbacks: dict[str, dnode.Path]) -> None:
        """Encode and send one message; :class:`SendError` if the session is gone."""
        text = dnode.encode_message(method, arguments, callbacks)
        try:
            self.session.send(text)
        except SessionClosed:
            raise SendError("can't send, session is closed") from None
        if self.traffic is not None:
            self.traffic.sent += len(text)

    @overload
    def call(
        self, method: str, kite: dict[str, Any], auth: dict[str, Any] | None, args: list[Any], result: None = None
    ) -> tuple[int, AsyncResult[Any]]: ...
    @overload
    def call(
        self, method: str, kite: dict[str, Any], auth: dict[str, Any] | None, args: list[Any], result: _R
    ) -> tuple[int, _R]: ...
    def call(
        self,
        method: str,
        kite: dict[str, Any],
        auth: dict[str, Any] | None,
        args: list[Any],
        result: Reply | None = None,
    ) -> tuple[int, Reply]:
        """Send a kite call; return its response id and what receives the reply.

        That is ``result`` if given (a :class:`ReplyWaiter` for a caller that blocks
        on it), else a new :class:`~gevent.event.AsyncResult`.
        """
        if self.closed:
            raise SendError("can't send, session is closed")
        scrubber = self.scrubber
        cb_id = scrubber.allocate()
        callbacks: dict[str, dnode.Path] = {str(cb_id): [0, "responseCallback"]}
        with_args = scrubber.scrub(args, [0, "withArgs"], callbacks)
        options = {
            "kite": kite,
            "authentication": auth,
            "responseCallback": dnode.FUNCTION_PLACEHOLDER,
            "withArgs": with_args,
        }
        if result is None:
            result = AsyncResult()
        self._pending[cb_id] = (result, method)
        try:
            self.send_message(method, [options], callbacks)
        except (SendError, LocalProtocolError):
            self._forget(cb_id, callbacks)
            raise
        return cb_id, result

    def cancel(self, cb_id: int) -> None:
        """Forget a pending call (after its timeout); a late reply is ignored."""
        self._pending.pop(cb_id, None)

    def _forget(self, cb_id: int, callbacks: dict[str, dnode.Path]) -> None:
        self._pending.pop(cb_id, None)
        for key in callbacks:
            self.scrubber.remove(int(key))

    def make_proxy(self, cb_id: int) -> Callable[..., None]:
        """A callable that invokes the peer's callback ``cb_id`` (fire and forget)."""

        def callback(*args: Any) -> None:
            callbacks: dict[str, dnode.Path] = {}
            arguments = self.scrubber.scrub(list(args), [], callbacks)
            self.send_message(cb_id, arguments, callbacks)

        callback.__name__ = f"remote_callback_{cb_id}"
        return callback

    # -- receiving ---------------------------------------------------------

    def run(self) -> None:
        """Read messages until the session ends, then fail every pending call.

        Returns once the session has ended, whichever greenlet read last.
        """
        if not self._lead():
            self._ended.wait()  # reading moved to another greenlet: wait for it to end

    def _lead(self, _: Any = None) -> bool:
        """The read loop, run by the current leader; ``False`` once it has handed reading on."""
        me = self._leader = getcurrent()
        session = self.session
        read_this_turn = 0  # messages read without an inline call since the loop last went round
        try:
            while True:
                if len(self._calls) >= MAX_QUEUED_CALLS:
                    self._queue_drained.clear()
                    self._queue_drained.wait()
                text = session.recv()
                if text is None:
                    break
                if self.traffic is not None:
                    self.traffic.received += len(text)
                try:
                    msg = dnode.decode_message(text)
                except ProtocolError as exc:
                    log.warning("dropping message from %s: %s", session.remote_addr, exc)
                    continue
                if self._dispatch(msg):
                    self._run_inline(msg)
                    if self._leader is not me:
                        self._call_worker(None)  # a follower reads now: finish the queue, then leave
                        return False
                    if self._inline_this_turn >= INLINE_CALLS_PER_TURN:
                        gevent.sleep(_NEXT_TURN)  # a sleep of 0 may not let the loop poll for I/O
                    read_this_turn = 0
                else:
                    read_this_turn += 1
                    if read_this_turn >= MESSAGES_PER_TURN:
                        read_this_turn = 0
                        gevent.sleep(_NEXT_TURN)
        except Exception:
            log.exception("read loop of %s failed", session.remote_addr)
        finally:
            if self._leader is me:
                self._end()
        return True

    def _run_inline(self, msg: dnode.Message) -> None:
        """Run a call in the leader; the hub hands reading on if it blocks."""
        self._leader_busy = True
        if self._check_scheduled:
            self._inline_this_turn += 1
        else:
            self._check_scheduled = True
            self._inline_this_turn = 1
            self._loop.run_callback(self._check_leader)
        try:
            self._serve(msg)
        except BaseException:  # killed inside the handler: give its slot back, then unwind
            if self._leader is getcurrent():
                self._leader_busy = False
            self._workers -= 1
            raise
        if self._leader is getcurrent():
            self._leader_busy = False
            if self._calls:  # queued while every worker was busy: a worker takes them on
                workers.submit(self._call_worker, self._calls.popleft())
            else:
                self._workers -= 1

    def _check_leader(self) -> None:
        """In the hub, once the leader has given up control: if it is inside a call, start a follower."""
        self._check_scheduled = False
        if self._leader_busy and not self.closed:
            self._leader_busy = False
            self._leader = None
            workers.submit(self._lead, None)

    def _end(self) -> None:
        self.closed = True
        self.session.close()
        self._fail_pending()
        self._ended.set()

    def _dispatch(self, msg: dnode.Message) -> bool:
        """Handle a response or callback; ``True`` for a call the leader should run now."""
        if msg.callbacks:
            dnode.unscrub(msg.arguments, msg.callbacks, self.make_proxy)
        method = msg.method
        if isinstance(method, str):
            if self._refuse is not None:
                try:
                    self._refuse(self, method, msg.arguments)
                except Exception:
                    log.exception("refusing call %r from %s failed", method, self.session.remote_addr)
                return False
            if self._workers < self._max_workers:
                self._workers += 1
                return True
            self._calls.append(msg)
            return False
        pending = self._pending.pop(method, None)
        if pending is not None:
            _deliver_response(pending[0], msg.arguments)
            return False
        fn = self.scrubber.get(method)
        if fn is None:
            return False  # unknown callback ids are ignored (§2.5)
        self._callbacks.append((fn, msg.arguments))
        if not self._callback_worker_running:
            self._callback_worker_running = True
            workers.submit(self._callback_worker, None)
        return False

    def _serve(self, msg: dnode.Message) -> None:
        try:
            self._on_call(self, msg.method, msg.arguments)  # type: ignore[arg-type]  # calls only: method is a str
        except Exception:
            log.exception("call %r from %s failed", msg.method, self.session.remote_addr)

    def _call_worker(self, msg: dnode.Message | None) -> None:
        """Serve ``msg`` (if any), then queued calls until none is left; holds one worker slot."""
        try:
            while True:
                if msg is not None:
                    self._serve(msg)
                if not self._calls:
                    break
                msg = self._calls.popleft()
                if len(self._calls) < MAX_QUEUED_CALLS // 2:
                    self._queue_drained.set()
        finally:
            self._workers -= 1

    def _callback_worker(self, _: Any = None) -> None:
        try:
            while self._callbacks:
                fn, arguments = self._callbacks.popleft()
                try:
                    fn(*arguments)
                except Exception:
                    log.exception("callback from %s failed", self.session.remote_addr)
        finally:
            self._callback_worker_running = False

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for result, _method in pending.values():
            result.set_exception(DisconnectError(DISCONNECT_MESSAGE))


def _deliver_response(result: Reply, arguments: list[Any]) -> None:
    """Resolve a call from its response arguments.

    Go and kite.js servers send ``[{"error": ..., "result": ...}]``; a kite.js
    *client* answering our call sends raw ``[error, result]`` or ``[null]``.
    """
    if len(arguments) == 1 and isinstance(arguments[0], dict):
        response = arguments[0]
        if "error" not in response and "result" not in response:
            result.set_exception(InvalidResponseError("Server has sent invalid response arguments"))
            return
        error, value = response.get("error"), response.get("result")
    elif arguments:
        error = arguments[0]
        value = arguments[1] if len(arguments) > 1 else None
    else:
        result.set_exception(InvalidResponseError("Invalid array length"))
        return
    if error is not None:
        result.set_exception(from_wire(error))
    else:
        result.set(value)
