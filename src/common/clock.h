// Monotonic time helpers. Thread-safe (free functions over std::chrono::steady_clock).
#pragma once

#include <chrono>

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

}  // namespace sluice
