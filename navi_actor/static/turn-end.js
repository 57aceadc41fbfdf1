/* How a turn ends on screen: the notices added below what streamed, and the
 * footer line (status, stats, why it stopped). A new end-of-turn notice goes
 * in endNotices() (as the cut-off notice of CUT_OFF does); a new status needs a label in STATUS_LABELS. TurnView.finish()
 * calls both, once per turn, after the blocks are settled. */
import { h } from "./dom.js";

export const STOP_STEPS = {
  event: "the agent stopped when asked",
  cancel: "the agent was cancelled",
  sigterm: "the agent process was terminated",
  sigkill: "the agent process was killed",
};

export const STATUS_LABELS = {
  done: "Done",
  stopped: "Stopped",
  failed: "Failed",
  interrupted: "Interrupted",
  rejected: "Not sent",
};

/** What a finished answer's `finish_reason` (stream_end, or the saved message's stats) says when the
 * answer is not complete; "stop" and "tool_calls" say nothing. */
export const CUT_OFF = {
  length: "Cut off: the answer reached its length limit.",
  content_filter: "Cut off: the model server's content filter stopped the answer.",
  unknown: "The model server did not say the answer was complete; it may be cut off.",
};

/** Notices an ended turn shows below its blocks. `info`: see TurnView.finish. */
export function endNotices(turn, status, info) {
  if ((status === "failed" || status === "interrupted" || status === "rejected") && info.error) {
    turn.error(info.error, info.code);
  }
  const reason = status === "done" && info.stats ? info.stats.finish_reason : null;
  if (typeof reason === "string" && Object.hasOwn(CUT_OFF, reason)) {
    turn.note("cutoff", CUT_OFF[reason]).el.dataset.finishReason = reason;
  }
}

/** The footer of an ended turn: its status label, then what it cost or why it stopped. */
export function endFooter(status, info) {
  const parts = [h("span", { class: "status-label", text: STATUS_LABELS[status] || status })];
  if (status === "done" && info.stats) {
    const s = info.stats;
    const bits = [];
    if (typeof s.elapsed_seconds === "number") bits.push(`${s.elapsed_seconds.toFixed(1)} s`);
    if (typeof s.token_count === "number") bits.push(`${s.token_count} tokens`);
    if (s.tool_call_count) bits.push(`${s.tool_call_count} tool call${s.tool_call_count === 1 ? "" : "s"}`);
    if (bits.length) parts.push(h("span", { class: "muted", text: ` · ${bits.join(" · ")}` }));
  }
  if (status === "stopped") {
    const why = info.message || info.error || (info.stopStep && STOP_STEPS[info.stopStep]);
    if (why) parts.push(h("span", { class: "muted", text: ` · ${why}` }));
  }
  return parts;
}
