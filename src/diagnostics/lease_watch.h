// LeaseWatch: the leak detector's memory (HikariCP's leak detection). A lease is one client's
// hold of one server, from the moment the server is attached until it goes back. Each scan is
// given the leases held right now; it reports, once each, the leases that passed the warning
// threshold, and later, once each, the reported leases that ended. Pure (fed a clock, no I/O);
// one instance per worker loop, touched only by that loop's janitor task; not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/clock.h"

namespace sluice::diagnostics {

struct Lease {
  uint64_t client_id = 0;
  TimePoint since{};  // when the client got the server; with client_id, names the lease
};

class LeaseWatch {
 public:
  struct Ended {
    Lease lease;
    std::string who;  // what remember() stored when it was reported
  };
  struct Scan {
    std::vector<Lease> overdue;  // passed the threshold in this scan: warn now
    std::vector<Ended> ended;    // reported earlier, no longer held: say so now
  };
  // `holding`: every lease held right now. A threshold of zero reports nothing new (leases
  // already reported still end).
  Scan scan(TimePoint t, Millis threshold, const std::vector<Lease>& holding);
  // Keeps `who` (the client's description) for the line that reports the lease's end, which
  // may come after the client is gone.
  void remember(uint64_t client_id, std::string who);
  size_t reported() const { return reported_.size(); }

 private:
  struct Reported {
    TimePoint since;
    std::string who;
  };
  std::unordered_map<uint64_t, Reported> reported_;  // by client id: one lease per client
};

// The SQL text of a Query ('Q') or Parse ('P') message, from its first bytes (header included;
// `msg` may stop short of the message's end), cut at `max` bytes; empty for other messages or
// when the text has not arrived. Pure.
std::string_view statementText(std::string_view msg, size_t max);

}  // namespace sluice::diagnostics
