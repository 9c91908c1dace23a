// Text and file helpers shared by the pgbouncer.ini and auth_file parsers; internal to
// src/config. Stateless free functions, safe to call from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::config {

bool isSpace(char c);
std::string_view trim(std::string_view s);
std::string toLower(std::string_view s);
// Splits on '\n'; a trailing '\r' stays on the line (trim() removes it).
std::vector<std::string_view> splitLines(std::string_view text);
// Reads a double-quoted token at s[i] where "" stands for one quote; advances i past it.
// nullopt when s[i] is not a quote or the token is unterminated.
std::optional<std::string> readDoubleQuoted(std::string_view s, size_t& i);

// `path` made absolute (relative paths resolve against `base_dir`, or the working directory when
// `base_dir` is empty) and lexically normalized; symlinks are not resolved.
std::string absolutePath(const std::string& path, const std::string& base_dir = "");
// The whole file. Throws ConfigError("<prefix>cannot read <path>: <reason>").
std::string readTextFile(const std::string& path, const std::string& prefix);

}  // namespace sluice::config
