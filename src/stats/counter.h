// Counter and Histogram: statistics written by exactly one thread (the loop that owns the
// shard) and read by any thread when scraped. A single writer makes an increment a relaxed load
// and store (no locked instruction); readers see a value that may lag by a few increments.
// Shards are summed by the reader (see Pool::statsTotals()).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

namespace sluice::stats {

class Counter {
 public:
  void add(uint64_t v = 1) {
    v_.store(v_.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
  }
  uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

// Seconds, in fixed buckets from 100 us to 60 s (Prometheus `le` bounds).
class Histogram {
 public:
  static constexpr std::array<double, 14> kBounds = {
      0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 60};
  void observe(double seconds) {
    size_t i = 0;
    while (i < kBounds.size() && seconds > kBounds[i]) ++i;
    buckets_[i].add();  // the last slot is +Inf
    sum_us_.add(seconds > 0 ? uint64_t(seconds * 1e6) : 0);
  }
  // Count in bucket i alone (not cumulative); i == kBounds.size() is the +Inf overflow.
  uint64_t bucket(size_t i) const { return buckets_[i].get(); }
  uint64_t count() const {
    uint64_t n = 0;
    for (const auto& b : buckets_) n += b.get();
    return n;
  }
  double sumSeconds() const { return double(sum_us_.get()) / 1e6; }

 private:
  std::array<Counter, kBounds.size() + 1> buckets_;
  Counter sum_us_;
};

}  // namespace sluice::stats
