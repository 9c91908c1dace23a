// Time helpers: monotonic (std::chrono::steady_clock) for durations, and the wall clock's ISO
// 8601 form for messages. Thread-safe free functions.
#pragma once

#include <chrono>
#include <string>

namespace sluice {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Millis = std::chrono::milliseconds;

inline TimePoint now() { return Clock::now(); }
inline double secondsSince(TimePoint t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
inline long long msBetween(TimePoint a, TimePoint b) {
  return std::chrono::duration_cast<Millis>(b - a).count();
}

// "2026-11-23T17:08:02.123Z" (UTC).
std::string isoTimestamp(std::chrono::system_clock::time_point t);

}  // namespace sluice
