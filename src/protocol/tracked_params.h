// The parameters whose values a client must always see as its own. PostgreSQL reports each of
// them with ParameterStatus, so the value a server connection currently has is always known,
// and a server handed to a client whose values differ is synced with SET first. Kept as a small
// fixed array, compared by index on every hand-over. Pure; thread-safe.
#pragma once

#include <strings.h>

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace sluice::protocol {

inline constexpr std::array<const char*, 6> kTrackedParams = {
    "client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings",
    "application_name"};
inline constexpr size_t kApplicationNameParam = 5;

using TrackedValues = std::array<std::string, kTrackedParams.size()>;

// Index of a tracked parameter, matched case-insensitively as PostgreSQL does.
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
