#include "config/text_util.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "config/config.h"

namespace sluice::config {

bool isSpace(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && isSpace(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && isSpace(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

std::vector<std::string_view> splitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  while (true) {
    size_t end = text.find('\n');
    lines.push_back(text.substr(0, end));
    if (end == std::string_view::npos) {
      return lines;
    }
    text.remove_prefix(end + 1);
  }
}

std::optional<std::string> readDoubleQuoted(std::string_view s, size_t& i) {
  if (i >= s.size() || s[i] != '"') {
    return std::nullopt;
  }
  std::string out;
  for (size_t j = i + 1; j < s.size(); ++j) {
    if (s[j] != '"') {
      out += s[j];
    } else if (j + 1 < s.size() && s[j + 1] == '"') {
      out += '"';
      ++j;
    } else {
      i = j + 1;
      return out;
    }
  }
  return std::nullopt;
}

std::string absolutePath(const std::string& path, const std::string& base_dir) {
  namespace fs = std::filesystem;
  fs::path p(path);
  if (p.is_relative() && !base_dir.empty()) {
    p = fs::path(base_dir) / p;
  }
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  return (ec ? p : abs).lexically_normal().string();
}

std::string readTextFile(const std::string& path, const std::string& prefix) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw ConfigError(prefix + "cannot read " + path + ": is a directory");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    throw ConfigError(prefix + "cannot read " + path + ": " + std::strerror(err));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    throw ConfigError(prefix + "cannot read " + path + ": read error");
  }
  return std::move(text).str();
}

}  // namespace sluice::config
