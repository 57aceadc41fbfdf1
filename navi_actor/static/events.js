/* Every server event the page handles, and what it does with it: the one place
 * to add a new event type. The protocol is described in docs/protocol.md.
 *
 * SessionView.onEvent() drops heartbeats and events already shown (by seq),
 * then looks the type up here: first in SESSION_EVENTS (a turn's start and end,
 * the socket's sync and replay bounds: handled by the SessionView), then in
 * TURN_EVENTS (what draws inside the live turn). A type in neither table (an
 * agent's own event type) is ignored. */

/** Events that change the session's state: `(view, ev)` → SessionView methods. */
export const SESSION_EVENTS = {
  session_sync: (view, ev) => view.onSync(ev),
  stream_start: (view, ev) => view.onStreamStart(ev),
  replay_start: (view, ev) => view.onReplayStart(ev),
  replay_end: () => {},
  queued: (view, ev) => view.onQueued(ev), // a message waits for the running turn (no seq)
  queue_cancelled: (view, ev) => view.onQueueCancelled(ev),
  stream_end: (view, ev) => view.finishLive("done", ev, { stats: ev, content: ev.content }),
  stream_stopped: (view, ev) => view.finishLive("stopped", ev, { stopStep: ev.stop_step, message: ev.message, error: ev.reason }),
  // with a seq, the turn failed; without one, the server refused something we sent and nothing ran
  error: (view, ev) => (typeof ev.seq === "number"
    ? view.finishLive("failed", ev, { error: ev.message, code: ev.code })
    : view.onRefused(ev)),
};

/** Events drawn inside the live turn: `(turn, ev)` → TurnView methods. The view
 *  then scrolls to the bottom, except after a handler that returns LATER (text
 *  is drawn at the next frame, which then scrolls: no layout per delta). */
export const LATER = "later";

export const TURN_EVENTS = {
  stream_delta: (turn, ev) => { turn.appendText(ev.delta || ""); return LATER; },
  thinking_delta: (turn, ev) => { turn.appendThinking(ev.delta || ""); return LATER; },
  thinking_end: (turn) => turn.endThinking(),
  turn_thinking: (turn, ev) => turn.wholeThinking(ev.thinking || "", { isSubagent: ev.is_subagent, open: true }),
  tool_started: (turn, ev) => turn.toolStarted(ev),
  tool_call: (turn, ev) => turn.toolFinished({
    tool: ev.tool, args: ev.args, result: ev.result, success: ev.success, isSubagent: ev.is_subagent, metadata: ev.metadata,
  }),
  planning_status: (turn, ev) => turn.planningStatus(ev),
  plan_ready: (turn, ev) => turn.planReady(ev),
  context_compressed: (turn, ev) => turn.contextCompressed(ev),
  profile_switched: (turn, ev) => turn.note("profile", `Switched to profile ${ev.profile_name || ev.profile_id}.`),
};
