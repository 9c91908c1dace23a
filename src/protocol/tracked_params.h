// The parameters whose values a client must always see as its own. PostgreSQL reports each of
// them with ParameterStatus, so the value a server connection currently has is always known,
// and a server handed to a client whose values differ is synced with SET first. Kept as a small
// fixed array, compared by index on every hand-over. Pure; thread-safe.
//
// One more slot, kSearchPathSlot, holds search_path, which PostgreSQL 15 does not report: sluice
// learns a client's value by asking the server (SHOW search_path) after a transaction that may
// have changed it, and keeps what each server has from its own syncs and resets. Its values are
// kSearchPathDefault (the session default, as after RESET), kSearchPathUnknown (a server whose
// value sluice cannot know: it is set again before any client uses it), or '=' followed by the
// value as SHOW search_path prints it (searchPathValue()).
#pragma once

#include <strings.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace sluice::protocol {

inline constexpr std::array<const char*, 6> kTrackedParams = {
    "client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings",
    "application_name"};
inline constexpr size_t kApplicationNameParam = 5;
inline constexpr size_t kSearchPathSlot = kTrackedParams.size();
inline constexpr size_t kTrackedSlots = kTrackedParams.size() + 1;
inline constexpr std::string_view kSearchPathDefault = "";
inline constexpr std::string_view kSearchPathUnknown = "?";
inline std::string searchPathValue(std::string_view shown) { return "=" + std::string(shown); }

using TrackedValues = std::array<std::string, kTrackedSlots>;

// A client's or server's values of the tracked parameters, as a shared immutable array: copies
// share one allocation (most clients and servers hold their pool's welcome values), so an idle
// client carries a pointer rather than six strings, and the comparison made on every hand-over
// is usually a pointer check. Never changed in place (a change makes a new array), so sets may
// be shared across threads.
class TrackedSet {
 public:
  const std::string& operator[](size_t i) const { return v_ ? (*v_)[i] : emptyValue(); }
  static constexpr size_t size() { return kTrackedSlots; }
  // Returns true if the value changed.
  bool set(size_t i, std::string_view value) {
    if ((*this)[i] == value) return false;
    TrackedValues copy = v_ ? *v_ : TrackedValues{};
    copy[i] = value;
    v_ = std::make_shared<const TrackedValues>(std::move(copy));
    return true;
  }
  bool sameObject(const TrackedSet& o) const { return v_ == o.v_; }
  bool operator==(const TrackedSet& o) const {
    if (v_ == o.v_) return true;
    for (size_t i = 0; i < size(); ++i) {
      if ((*this)[i] != o[i]) return false;
    }
    return true;
  }

 private:
  static const std::string& emptyValue() {
    static const std::string kEmpty;
    return kEmpty;
  }
  std::shared_ptr<const TrackedValues> v_;
};

// Index of a tracked parameter reported by ParameterStatus (never kSearchPathSlot), matched
// case-insensitively as PostgreSQL does.
inline std::optional<size_t> trackedIndex(std::string_view name) {
  for (size_t i = 0; i < kTrackedParams.size(); ++i) {
    if (name.size() == std::char_traits<char>::length(kTrackedParams[i]) &&
        strncasecmp(name.data(), kTrackedParams[i], name.size()) == 0) {
      return i;
    }
  }
  return std::nullopt;
}

}  // namespace sluice::protocol
