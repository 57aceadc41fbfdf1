/* A session's saved messages (GET /sessions/ID) as turns on screen. */
import { TurnView } from "./turn-view.js";

/** Messages (user, tool…, assistant) grouped by run, in order. */
export function groupByRun(messages) {
  const groups = [];
  let current = null;
  for (const m of messages) {
    if (m.role === "user" || !current || (m.run_id && m.run_id !== current.runId)) {
      current = { runId: m.run_id || null, user: null, tools: [], assistant: null };
      groups.push(current);
    }
    if (m.role === "user") current.user = m;
    else if (m.role === "tool") current.tools.push(m);
    else if (m.role === "assistant") current.assistant = m;
  }
  return groups;
}

/** The user's side of a saved turn, as TurnView.setUser takes it. */
export function savedUser(user) {
  return { content: user.content, imageCount: user.images, files: user.files };
}

/** Build a finished (or still running) turn from the saved messages of one run; `images`:
 *  those this page sent with its message, if it did (the store keeps only their number). */
export function turnFromHistory(group, images) {
  const turn = new TurnView(group.runId);
  if (group.user) turn.setUser({ ...savedUser(group.user), images });
  const reply = group.assistant;
  if (reply && reply.thinking) turn.wholeThinking(reply.thinking);
  for (const m of group.tools) {
    turn.toolFinished({ tool: m.tool, args: m.args, success: m.success, isSubagent: m.is_subagent, resultText: m.content });
  }
  if (reply) {
    if (reply.content) turn.appendText(reply.content);
    turn.finish(reply.status || "done", { error: reply.error, code: reply.error_code, stats: reply.stats });
  }
  return turn;
}
