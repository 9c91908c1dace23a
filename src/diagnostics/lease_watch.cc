#include "diagnostics/lease_watch.h"

#include <algorithm>
#include <cstring>

namespace sluice::diagnostics {

LeaseWatch::Scan LeaseWatch::scan(TimePoint t, Millis threshold,
                                  const std::vector<Lease>& holding) {
  Scan out;
  std::unordered_map<uint64_t, TimePoint> now_held;
  now_held.reserve(holding.size());
  for (const Lease& l : holding) now_held.emplace(l.client_id, l.since);
  for (auto it = reported_.begin(); it != reported_.end();) {
    auto held = now_held.find(it->first);
    if (held != now_held.end() && held->second == it->second.since) {
      ++it;
      continue;
    }
    // Given back (maybe already holding another server: that is a new lease) or gone.
    out.ended.push_back({{it->first, it->second.since}, std::move(it->second.who)});
    it = reported_.erase(it);
  }
  if (threshold.count() <= 0) return out;
  for (const Lease& l : holding) {
    if (t - l.since < threshold || reported_.count(l.client_id)) continue;
    reported_.emplace(l.client_id, Reported{l.since, std::string()});
    out.overdue.push_back(l);
  }
  return out;
}

void LeaseWatch::remember(uint64_t client_id, std::string who) {
  auto it = reported_.find(client_id);
  if (it != reported_.end()) it->second.who = std::move(who);
}

std::string_view statementText(std::string_view msg, size_t max) {
  constexpr size_t kHeader = 5;
  if (msg.size() <= kHeader || (msg[0] != 'Q' && msg[0] != 'P')) return {};
  std::string_view body = msg.substr(kHeader);
  if (msg[0] == 'P') {
    size_t name_end = body.find('\0');  // the statement's name comes first
    if (name_end == std::string_view::npos) return {};
    body.remove_prefix(name_end + 1);
  }
  size_t end = body.find('\0');
  if (end != std::string_view::npos) body = body.substr(0, end);
  return body.substr(0, std::min(max, body.size()));
}

}  // namespace sluice::diagnostics
