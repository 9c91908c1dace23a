// SqlstateCounts: errors counted by SQLSTATE, written by one thread (the loop that owns the
// shard) and read by any, without a lock. A few distinct codes occur in practice; the first
// kSlots distinct ones get a slot each, later ones (and malformed codes) count as "other", so
// the metric's label set stays bounded.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "stats/counter.h"

namespace sluice::stats {

class SqlstateCounts {
 public:
  static constexpr size_t kSlots = 24;

  void add(std::string_view sqlstate) {
    uint64_t key = pack(sqlstate);
    if (key != 0) {
      for (size_t i = 0; i < kSlots; ++i) {
        uint64_t k = keys_[i].load(std::memory_order_relaxed);  // only this thread writes it
        if (k == key) {
          counts_[i].add();
          return;
        }
        if (k == 0) {
          counts_[i].add();
          keys_[i].store(key, std::memory_order_release);  // published after its count
          return;
        }
      }
    }
    other_.add();
  }

  // f(sqlstate, count) for every code seen, then ("other", n) if any fell outside.
  template <typename F>
  void forEach(F f) const {
    for (size_t i = 0; i < kSlots; ++i) {
      uint64_t k = keys_[i].load(std::memory_order_acquire);
      if (k == 0) break;
      f(unpack(k), counts_[i].get());
    }
    if (uint64_t n = other_.get()) f(std::string("other"), n);
  }

  // Five characters [0-9A-Z] -> a non-zero key; anything else -> 0.
  static uint64_t pack(std::string_view s) {
    if (s.size() != 5) return 0;
    uint64_t key = uint64_t{1} << 40;
    for (size_t i = 0; i < 5; ++i) {
      char c = s[i];
      if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'))) return 0;
      key |= uint64_t(uint8_t(c)) << (8 * (4 - i));
    }
    return key;
  }
  static std::string unpack(uint64_t key) {
    std::string s(5, ' ');
    for (size_t i = 0; i < 5; ++i) s[i] = char((key >> (8 * (4 - i))) & 0xff);
    return s;
  }

 private:
  std::array<std::atomic<uint64_t>, kSlots> keys_{};
  std::array<Counter, kSlots> counts_;
  Counter other_;
};

}  // namespace sluice::stats
