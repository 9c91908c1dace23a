// gatherLoops: asks every worker loop a question about the objects it owns, without any loop
// waiting for another. Used by the admin console (SHOW CLIENTS, SERVERS, ...) and the HTTP
// endpoints (/metrics per application_name). Stateless; thread-safe to call from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "session/session_context.h"

namespace sluice::admin {

// Posts `visit` to every worker loop; each loop fills its own slot with what it owns. `done`
// runs once with the parts in loop order, on the thread of the loop that finished last (on the
// calling thread when there are no loops). A loop that never runs its task (stalled, or torn
// down) means `done` never runs: callers that wait must wait with a deadline, and the shared
// state stays valid for a late finisher.
template <typename Part>
void gatherLoops(session::SessionContext* ctx, std::function<Part(session::LoopClients&)> visit,
                 std::function<void(std::vector<Part>&)> done) {
  struct State {
    std::vector<Part> parts;
    std::atomic<size_t> pending{0};
    std::function<Part(session::LoopClients&)> visit;
    std::function<void(std::vector<Part>&)> done;
  };
  auto st = std::make_shared<State>();
  size_t n = ctx->loops.size();
  st->parts.resize(n);
  st->pending.store(n);
  st->visit = std::move(visit);
  st->done = std::move(done);
  if (n == 0) {
    st->done(st->parts);
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    session::LoopClients* lc = ctx->loops[i].get();
    lc->loop->post([st, lc, i] {
      st->parts[i] = st->visit(*lc);
      // acq_rel: the loop that finishes last sees every other loop's part.
      if (st->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) st->done(st->parts);
    });
  }
}

// Same, with `done` run on `home` (the asking admin session's loop).
template <typename Part>
void gatherLoopsTo(session::SessionContext* ctx, net::EventLoop* home,
                   std::function<Part(session::LoopClients&)> visit,
                   std::function<void(std::vector<Part>&)> done) {
  gatherLoops<Part>(ctx, std::move(visit),
                    [home, done = std::move(done)](std::vector<Part>& parts) {
                      home->post([done, parts = std::move(parts)]() mutable { done(parts); });
                    });
}

}  // namespace sluice::admin
