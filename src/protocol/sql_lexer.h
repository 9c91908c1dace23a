// A small SQL lexer shared by the pure inspectors of query texts (prepared_statements: DEALLOCATE
// and DISCARD ALL; session_state: state transaction pooling cannot carry). Enough to split a
// query string into statements at ';' and read their words: quoted strings (also E'', B'', X'',
// N'', U&''), quoted identifiers, dollar quotes and nested comments are skipped as PostgreSQL
// skips them. Not a parser. Pure; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::protocol {

struct SqlToken {
  enum Type : uint8_t { kWord, kQuotedIdent, kLiteral, kPunct } type;
  // kWord: as written (compare with sqlWordIs()); kQuotedIdent: between the quotes, doubled
  // quotes still doubled (sqlName()); kPunct: the character; kLiteral: the literal as written,
  // quotes, prefix (E, B, X, N, U&) and dollar tags included (sqlStringValue()), or "$1".
  std::string_view text;
};

inline char sqlLower(char c) { return c >= 'A' && c <= 'Z' ? char(c + 32) : c; }
inline bool sqlIdentStart(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
inline bool sqlIdentChar(unsigned char c) {
  return sqlIdentStart(c) || (c >= '0' && c <= '9') || c == '$';
}
// `t` is the word `lower_word` (given in lower case), in any case.
inline bool sqlWordIs(const SqlToken& t, std::string_view lower_word) {
  if (t.type != SqlToken::kWord || t.text.size() != lower_word.size()) return false;
  for (size_t i = 0; i < lower_word.size(); ++i) {
    if (sqlLower(t.text[i]) != lower_word[i]) return false;
  }
  return true;
}
// A name as PostgreSQL reads it: a word folded to lower case, a quoted identifier unescaped.
inline std::string sqlName(const SqlToken& t) {
  std::string out;
  if (t.type == SqlToken::kWord) {
    for (char c : t.text) out.push_back(sqlLower(c));
  } else {
    for (size_t k = 0; k < t.text.size(); ++k) {
      out.push_back(t.text[k]);
      if (t.text[k] == '"' && k + 1 < t.text.size() && t.text[k + 1] == '"') ++k;
    }
  }
  return out;
}

// The value of a plain string literal token ('...', doubled quotes undone); false for any other
// token, and for E'', U&'', B'', X'', N'' and dollar-quoted literals (their escapes are not
// decoded here).
inline bool sqlStringValue(const SqlToken& t, std::string* out) {
  std::string_view r = t.text;
  if (t.type != SqlToken::kLiteral || r.size() < 2 || r.front() != '\'' || r.back() != '\'') {
    return false;
  }
  out->clear();
  for (size_t k = 1; k + 1 < r.size(); ++k) {
    out->push_back(r[k]);
    if (r[k] == '\'' && k + 2 < r.size() && r[k + 1] == '\'') ++k;
  }
  return true;
}

// Calls f(tokens) for each non-empty statement (split at ';' outside quotes and comments);
// stops when f returns true.
template <typename F>
void forEachSqlStatement(std::string_view s, F f) {
  std::vector<SqlToken> toks;
  size_t i = 0;
  const size_t n = s.size();
  auto skipQuoted = [&](char q, bool backslash) {  // i is at the opening quote
    ++i;
    while (i < n) {
      char c = s[i];
      if (backslash && c == '\\') {
        i += 2;
        continue;
      }
      ++i;
      if (c == q) {
        if (i < n && s[i] == q) {  // doubled quote
          ++i;
          continue;
        }
        return;
      }
    }
  };
  while (i < n) {
    unsigned char c = uint8_t(s[i]);
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      ++i;
    } else if (c == '-' && i + 1 < n && s[i + 1] == '-') {
      while (i < n && s[i] != '\n') ++i;
    } else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
      int depth = 1;  // PostgreSQL's block comments nest
      i += 2;
      while (i < n && depth > 0) {
        if (s[i] == '/' && i + 1 < n && s[i + 1] == '*') {
          ++depth;
          i += 2;
        } else if (s[i] == '*' && i + 1 < n && s[i + 1] == '/') {
          --depth;
          i += 2;
        } else {
          ++i;
        }
      }
    } else if (c == ';') {
      ++i;
      if (!toks.empty() && f(toks)) return;
      toks.clear();
    } else if (c == '\'') {
      size_t start = i;
      skipQuoted('\'', false);
      toks.push_back({SqlToken::kLiteral, s.substr(start, i - start)});
    } else if (c == '"') {
      size_t start = i;
      skipQuoted('"', false);
      std::string_view raw = s.substr(start + 1, i - start - 1);
      if (!raw.empty() && raw.back() == '"') raw.remove_suffix(1);
      toks.push_back({SqlToken::kQuotedIdent, raw});
    } else if (c == '$') {
      // $1 (a parameter) or $tag$ ... $tag$ (a dollar-quoted string).
      size_t j = i + 1;
      size_t start = i;
      if (j < n && s[j] >= '0' && s[j] <= '9') {
        while (j < n && s[j] >= '0' && s[j] <= '9') ++j;
        i = j;
        toks.push_back({SqlToken::kLiteral, s.substr(start, i - start)});
        continue;
      }
      while (j < n && s[j] != '$' && sqlIdentChar(uint8_t(s[j]))) ++j;
      if (j < n && s[j] == '$') {
        std::string_view tag = s.substr(i, j - i + 1);
        size_t end = s.find(tag, j + 1);
        i = end == std::string_view::npos ? n : end + tag.size();
      } else {
        ++i;
      }
      toks.push_back({SqlToken::kLiteral, s.substr(start, i - start)});
    } else if (sqlIdentStart(c)) {
      size_t start = i;
      while (i < n && sqlIdentChar(uint8_t(s[i]))) ++i;
      std::string_view word = s.substr(start, i - start);
      if (i < n && s[i] == '\'' && word.size() == 1 &&
          (sqlLower(word[0]) == 'e' || sqlLower(word[0]) == 'b' || sqlLower(word[0]) == 'x' ||
           sqlLower(word[0]) == 'n')) {
        skipQuoted('\'', sqlLower(word[0]) == 'e');  // E'..' takes backslash escapes
        toks.push_back({SqlToken::kLiteral, s.substr(start, i - start)});
      } else if (i < n && s[i] == '&' && word.size() == 1 && sqlLower(word[0]) == 'u' &&
                 i + 1 < n && (s[i + 1] == '\'' || s[i + 1] == '"')) {
        ++i;  // U&'...' or U&"..."
        char q = s[i];
        skipQuoted(q, false);
        // A U&"..." identifier's escapes are not decoded: it never equals a name compared with.
        toks.push_back({q == '\'' ? SqlToken::kLiteral : SqlToken::kQuotedIdent,
                        q == '\'' ? s.substr(start, i - start) : std::string_view()});
      } else {
        toks.push_back({SqlToken::kWord, word});
      }
    } else {
      ++i;
      toks.push_back({SqlToken::kPunct, s.substr(i - 1, 1)});
    }
  }
  if (!toks.empty()) f(toks);
}

}  // namespace sluice::protocol
