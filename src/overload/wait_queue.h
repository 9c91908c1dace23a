// WaitQueue: clients waiting for a server connection of one pool. Fair across keys (the
// client's application_name, or user): keys take turns, and within a key clients are served in
// arrival order, so one flooding application cannot starve the others. Pure data structure, fed
// a clock by its caller; not thread-safe: the owning Pool guards it with its mutex.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/clock.h"

namespace sluice::overload {

template <typename T>
class WaitQueue {
 public:
  struct Entry {
    uint64_t id;
    std::string key;
    TimePoint since;
    T value;
  };

  void push(uint64_t id, std::string key, TimePoint since, T value) {
    auto it = lanes_.find(key);
    if (it == lanes_.end()) {
      it = lanes_.emplace(key, Lane{}).first;
      rotation_.push_back(key);
    }
    it->second.entries.push_back(Entry{id, key, since, std::move(value)});
    index_[id] = std::prev(it->second.entries.end());
    ++size_;
  }

  // Removes and returns the next entry to serve from the lane whose turn it is: its oldest
  // entry, or with `newest_first` its newest (CoDel's overload mode: fresh requests can still
  // make their deadline, stale ones are failed by the caller).
  std::optional<Entry> pop(bool newest_first = false) {
    if (rotation_.empty()) return std::nullopt;
    std::string key = std::move(rotation_.front());
    rotation_.pop_front();
    Lane& lane = lanes_[key];
    Entry e = std::move(newest_first ? lane.entries.back() : lane.entries.front());
    if (newest_first) {
      lane.entries.pop_back();
    } else {
      lane.entries.pop_front();
    }
    index_.erase(e.id);
    --size_;
    if (lane.entries.empty()) {
      lanes_.erase(key);
    } else {
      rotation_.push_back(std::move(key));
    }
    return e;
  }

  // Removes a specific entry (cancelled, timed out, disconnected). Returns it if it was queued.
  std::optional<Entry> remove(uint64_t id) {
    auto it = index_.find(id);
    if (it == index_.end()) return std::nullopt;
    auto entry_it = it->second;
    index_.erase(it);
    Entry e = std::move(*entry_it);
    auto lane_it = lanes_.find(e.key);
    lane_it->second.entries.erase(entry_it);
    if (lane_it->second.entries.empty()) {
      lanes_.erase(lane_it);
      rotation_.remove(e.key);
    }
    --size_;
    return e;
  }

  bool contains(uint64_t id) const { return index_.count(id) != 0; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Oldest arrival time among all waiters (for maxwait), if any.
  std::optional<TimePoint> oldest() const {
    std::optional<TimePoint> best;
    for (const auto& [key, lane] : lanes_) {
      if (!lane.entries.empty() && (!best || lane.entries.front().since < *best)) {
        best = lane.entries.front().since;
      }
    }
    return best;
  }

  // Ids of entries that arrived before `cutoff` (for deadlines and the reserve pool).
  std::vector<uint64_t> arrivedBefore(TimePoint cutoff) const {
    std::vector<uint64_t> ids;
    for (const auto& [key, lane] : lanes_) {
      for (const auto& e : lane.entries) {
        if (e.since >= cutoff) break;  // lanes are in arrival order
        ids.push_back(e.id);
      }
    }
    return ids;
  }

 private:
  struct Lane {
    std::list<Entry> entries;
  };
  std::unordered_map<std::string, Lane> lanes_;
  std::list<std::string> rotation_;  // keys with waiters, in serving order
  std::unordered_map<uint64_t, typename std::list<Entry>::iterator> index_;
  size_t size_ = 0;
};

}  // namespace sluice::overload
