#include "protocol/session_state.h"

#include <cstring>
#include <vector>

#include "protocol/sql_lexer.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace sluice::protocol {

const char* sessionStateLabel(SessionState s) {
  static constexpr const char* kLabels[] = {"",
#define SLUICE_X(e, label, what) label,
                                            SLUICE_SESSION_STATES(SLUICE_X)
#undef SLUICE_X
  };
  return kLabels[size_t(s)];
}

const char* sessionStateWhat(SessionState s) {
  static constexpr const char* kWhat[] = {"",
#define SLUICE_X(e, label, what) what,
                                          SLUICE_SESSION_STATES(SLUICE_X)
#undef SLUICE_X
  };
  return kWhat[size_t(s)];
}

namespace {

// `s` starts with the lower-case `word` (case-insensitively).
bool startsWithCi(std::string_view s, std::string_view word) {
  if (s.size() < word.size()) return false;
  for (size_t i = 0; i < word.size(); ++i) {
    if (sqlLower(s[i]) != word[i]) return false;
  }
  return true;
}

// ---- the prefilter ----

// One pass over the bytes: is there a ';' (more than one statement, or one inside a literal;
// bit kSemicolon) or a '(' (a function call: the lock functions and set_config() are only state
// when called; bit kParen)? SSE2 (x86-64's baseline) compares 16 bytes at a time into two
// accumulators; the last block overlaps the one before it instead of a scalar tail.
constexpr unsigned kSemicolon = 1;
constexpr unsigned kParen = 2;
unsigned prefilter(std::string_view s) {
  const char* p = s.data();
  const size_t n = s.size();
#if defined(__SSE2__)
  if (n >= 16) {
    const __m128i ksemi = _mm_set1_epi8(';');
    const __m128i kparen = _mm_set1_epi8('(');
    __m128i semi = _mm_setzero_si128();
    __m128i paren = _mm_setzero_si128();
    auto block = [&](size_t i) {
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      semi = _mm_or_si128(semi, _mm_cmpeq_epi8(b, ksemi));
      paren = _mm_or_si128(paren, _mm_cmpeq_epi8(b, kparen));
    };
    for (size_t i = 0; i + 16 < n; i += 16) block(i);
    block(n - 16);
    return (_mm_movemask_epi8(semi) != 0 ? kSemicolon : 0) |
           (_mm_movemask_epi8(paren) != 0 ? kParen : 0);
  }
#endif
  unsigned hit = 0;
  for (size_t i = 0; i < n; ++i) hit |= (p[i] == ';' ? kSemicolon : 0) | (p[i] == '(' ? kParen : 0);
  return hit;
}

// Four bytes as inspectSessionEffects() reads them, for comparing the first word with a command.
constexpr uint32_t word4(const char (&w)[5]) {
  return uint32_t(uint8_t(w[0])) | uint32_t(uint8_t(w[1])) << 8 | uint32_t(uint8_t(w[2])) << 16 |
         uint32_t(uint8_t(w[3])) << 24;
}

// Does the '(' at `paren` call one of the functions that matter (a session advisory lock
// function or set_config, in any case, also schema-qualified)? The name is read backwards over
// whitespace; a quoted name ("...") or a comment before the '(' is left to the lexer.
bool callsCandidate(std::string_view s, size_t paren) {
  size_t e = paren;
  // Every candidate name ends in 'k' (..._lock), 'd' (..._shared) or 'g' (set_config): most
  // calls (count, coalesce, now, IN (...), VALUES (...)) are told apart by the byte before '('.
  for (;;) {
    if (e == 0) return false;
    switch (s[e - 1]) {
      case 'k':
      case 'K':
      case 'd':
      case 'D':
      case 'g':
      case 'G':
        break;
      case ' ':
      case '\t':
      case '\n':
      case '\r':
      case '\f':
      case '\v':
        --e;
        continue;
      case '"':  // "pg_advisory_lock"(1), or a comment before the '(': the lexer decides
      case '/':
        return true;
      default:
        return false;
    }
    break;
  }
  size_t b = e;
  while (b > 0 && sqlIdentChar(uint8_t(s[b - 1]))) --b;
  std::string_view name = s.substr(b, e - b);
  switch (name.size()) {
    case 10:
      return startsWithCi(name, "set_config");
    case 16:
      return startsWithCi(name, "pg_advisory_lock");
    case 20:
      return startsWithCi(name, "pg_try_advisory_lock");
    case 23:
      return startsWithCi(name, "pg_advisory_lock_shared");
    case 27:
      return startsWithCi(name, "pg_try_advisory_lock_shared");
    default:
      return false;
  }
}

// Some '(' in `s` calls a candidate. The '(' are found 16 bytes at a time; the last block
// overlaps the one before it, whose '(' it skips.
[[gnu::noinline]] bool hasCandidateCall(std::string_view s) {
  const char* p = s.data();
  const size_t n = s.size();
#if defined(__SSE2__)
  if (n >= 16) {
    const __m128i kparen = _mm_set1_epi8('(');
    auto block = [&](size_t i, unsigned skip) {
      auto b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      auto m = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(b, kparen))) >> skip << skip;
      for (; m != 0; m &= m - 1) {
        if (callsCandidate(s, i + size_t(__builtin_ctz(m)))) return true;
      }
      return false;
    };
    size_t i = 0;
    for (; i + 16 < n; i += 16) {
      if (block(i, 0)) return true;
    }
    return block(n - 16, unsigned(i - (n - 16)));
  }
#endif
  for (size_t i = 0; i < n; ++i) {
    if (p[i] == '(' && callsCandidate(s, i)) return true;
  }
  return false;
}

// ---- the lexer (candidates only) ----

using Token = SqlToken;
bool eq(const Token& t, std::string_view lower_word) { return sqlWordIs(t, lower_word); }

bool isAdvisoryLockFunction(const Token& t) {
  static constexpr std::string_view kNames[] = {"pg_advisory_lock", "pg_advisory_lock_shared",
                                                "pg_try_advisory_lock",
                                                "pg_try_advisory_lock_shared"};
  for (std::string_view name : kNames) {
    if (eq(t, name) || (t.type == Token::kQuotedIdent && t.text == name)) return true;
  }
  return false;
}

bool isName(const Token& t, std::string_view lower_name) {
  return eq(t, lower_name) || (t.type == Token::kQuotedIdent && t.text == lower_name);
}

bool isPunct(const Token& t, char c) {
  return t.type == Token::kPunct && t.text.size() == 1 && t.text[0] == c;
}

// A call set_config(name, value, is_local) starting at t[k] ("set_config", then "("): may it
// change the session's search_path? Only a literal name other than search_path, or a literal
// true for is_local, says no.
bool setConfigMayChangeSearchPath(const std::vector<Token>& t, size_t k) {
  std::vector<std::pair<size_t, size_t>> args;  // [first, last) tokens of each argument
  size_t start = k + 2;
  int depth = 0;
  size_t j = start;
  for (; j < t.size(); ++j) {
    if (isPunct(t[j], '(') || isPunct(t[j], '[')) ++depth;
    if (isPunct(t[j], ')') || isPunct(t[j], ']')) {
      if (depth == 0) break;
      --depth;
    }
    if (depth == 0 && isPunct(t[j], ',')) {
      args.emplace_back(start, j);
      start = j + 1;
    }
  }
  if (j == t.size()) return true;  // not a whole call: assume the worst
  args.emplace_back(start, j);
  if (args.size() != 3) return true;
  std::string v;
  auto single = [&](size_t a) -> const Token* {
    return args[a].second - args[a].first == 1 ? &t[args[a].first] : nullptr;
  };
  if (const Token* name = single(0); name && sqlStringValue(*name, &v)) {
    std::string lower;
    for (char c : v) lower.push_back(sqlLower(c));
    if (lower != "search_path") return false;
  }
  if (const Token* local = single(2)) {
    if (eq(*local, "true")) return false;
    if (sqlStringValue(*local, &v)) {
      std::string lower;
      for (char c : v) lower.push_back(sqlLower(c));
      if (lower == "true" || lower == "t" || lower == "on" || lower == "yes") return false;
    }
  }
  return true;
}

// A DO block's body, searched word by word (letters, digits, '_' and '$'; everything else,
// quotes and comment marks included, separates words), so that statements run with EXECUTE
// '...' are seen too. Conservative: a word sequence is taken for the statement it spells.
void inspectDoBody(std::string_view body, SessionEffects& out) {
  std::vector<std::string_view> w;
  for (size_t i = 0; i < body.size();) {
    if (!sqlIdentChar(uint8_t(body[i]))) {
      ++i;
      continue;
    }
    size_t start = i;
    while (i < body.size() && sqlIdentChar(uint8_t(body[i]))) ++i;
    w.push_back(body.substr(start, i - start));
  }
  auto is = [&](size_t k, std::string_view lower_word) {
    return k < w.size() && sqlWordIs(Token{Token::kWord, w[k]}, lower_word);
  };
  auto found = [&](SessionState s) {
    if (out.state == SessionState::kNone) out.state = s;
  };
  for (size_t k = 0; k < w.size(); ++k) {
    if (is(k, "pg_advisory_lock") || is(k, "pg_advisory_lock_shared") ||
        is(k, "pg_try_advisory_lock") || is(k, "pg_try_advisory_lock_shared")) {
      found(SessionState::kAdvisoryLock);
    } else if (is(k, "listen")) {
      found(SessionState::kListen);
    } else if (is(k, "create")) {
      size_t j = k + 1;
      if (is(j, "or") && is(j + 1, "replace")) j += 2;
      if (is(j, "global") || is(j, "local")) ++j;
      if (is(j, "temp") || is(j, "temporary")) found(SessionState::kTempTable);
    } else if (is(k, "with") && is(k + 1, "hold")) {
      found(SessionState::kWithHold);
    } else if (is(k, "prepare") && k + 1 < w.size() && !is(k + 1, "transaction")) {
      found(SessionState::kSqlPrepare);
    } else if (is(k, "set")) {
      size_t j = k + 1;
      if (is(j, "session") && !is(j + 1, "characteristics")) {
        if (is(j + 1, "authorization")) found(SessionState::kSessionAuthorization);
        ++j;
      }
      if (is(j, "role") || (is(j, "session") && is(j + 1, "authorization"))) {
        found(SessionState::kSessionAuthorization);
      }
    } else if (is(k, "search_path") || is(k, "set_config") ||
               (is(k, "reset") && is(k + 1, "all"))) {
      out.search_path = true;
    }
  }
}

// One statement's effects, added to `out` (whose state is still kNone).
void classify(const std::vector<Token>& t, SessionEffects& out) {
  const size_t n = t.size();
  auto at = [&](size_t k, std::string_view w) { return k < n && eq(t[k], w); };
  // Function calls anywhere in the statement: pg_advisory_lock(...), set_config(...), also
  // qualified.
  for (size_t k = 0; k + 1 < n; ++k) {
    if (!isPunct(t[k + 1], '(')) continue;
    if (isAdvisoryLockFunction(t[k])) {
      out.state = SessionState::kAdvisoryLock;
      return;
    }
    if (!out.search_path && isName(t[k], "set_config") && setConfigMayChangeSearchPath(t, k)) {
      out.search_path = true;
    }
  }
  if (at(0, "listen")) {
    out.state = SessionState::kListen;
  } else if (at(0, "create")) {
    size_t k = 1;
    if (at(k, "or") && at(k + 1, "replace")) k += 2;
    if (at(k, "global") || at(k, "local")) ++k;
    if (!at(k, "temp") && !at(k, "temporary")) return;
    for (size_t j = k; j + 2 < n; ++j) {  // ON COMMIT DROP: gone at the end of the transaction
      if (at(j, "on") && at(j + 1, "commit") && at(j + 2, "drop")) return;
    }
    out.state = SessionState::kTempTable;
  } else if (at(0, "declare")) {
    // DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR [WITH|WITHOUT HOLD]
    // FOR query: only the words before FOR are the cursor's options.
    for (size_t k = 2; k + 1 < n && !at(k, "for"); ++k) {
      if (at(k, "with") && at(k + 1, "hold")) {
        out.state = SessionState::kWithHold;
        return;
      }
    }
  } else if (at(0, "prepare")) {
    // PREPARE TRANSACTION 'gid' is two-phase commit, not a statement.
    if (at(1, "transaction") && n > 2 && t[2].type == Token::kLiteral) return;
    if (n < 3 || (t[1].type != Token::kWord && t[1].type != Token::kQuotedIdent)) return;
    size_t k = 2;
    if (isPunct(t[k], '(')) {
      int depth = 0;
      for (; k < n; ++k) {
        if (t[k].type != Token::kPunct) continue;
        if (t[k].text == "(") ++depth;
        if (t[k].text == ")" && --depth == 0) break;
      }
      ++k;
    }
    if (at(k, "as")) out.state = SessionState::kSqlPrepare;
  } else if (at(0, "set")) {
    size_t k = 1;
    if (at(k, "session") && !at(k + 1, "characteristics")) {
      // SET SESSION ROLE, SET SESSION SESSION AUTHORIZATION, SET SESSION AUTHORIZATION
      if (at(k + 1, "authorization")) {
        out.state = SessionState::kSessionAuthorization;
        return;
      }
      ++k;
    }
    if (at(k, "role") || (at(k, "session") && at(k + 1, "authorization"))) {
      out.state = SessionState::kSessionAuthorization;
    } else if (k < n && (isName(t[k], "search_path") || at(k, "schema"))) {
      out.search_path = true;  // SET SCHEMA 'x' is SET search_path TO 'x'; not SET LOCAL
    }
  } else if (at(0, "reset")) {
    if (n > 1 && (isName(t[1], "search_path") || at(1, "all"))) out.search_path = true;
  } else if (at(0, "discard")) {
    if (at(1, "all")) out.search_path = true;  // RESET ALL among the rest
  } else if (at(0, "do")) {
    for (size_t k = 1; k < n; ++k) {
      if (t[k].type == Token::kLiteral) inspectDoBody(t[k].text, out);
    }
  }
}

[[gnu::noinline, gnu::cold]] SessionEffects lex(std::string_view sql) {
  SessionEffects found;
  forEachSqlStatement(sql, [&](const std::vector<Token>& toks) {
    classify(toks, found);
    return found.state != SessionState::kNone;
  });
  return found;
}

// One statement: only its first word (after whitespace; a comment is looked past by the lexer)
// can make it one of the commands. A switch on its first letter, then one or two compares.
[[gnu::always_inline]] inline bool firstWordMayBeState(std::string_view sql) {
  size_t i = 0;
  while (i < sql.size() && uint8_t(sql[i]) <= ' ') ++i;
  std::string_view rest = sql.substr(i);
  if (rest.size() < 4) return false;  // shorter than any of the commands
  uint32_t w = (uint32_t(uint8_t(rest[0])) | uint32_t(uint8_t(rest[1])) << 8 |
                uint32_t(uint8_t(rest[2])) << 16 | uint32_t(uint8_t(rest[3])) << 24) |
               0x20202020;  // one load on x86; only letters fold to letters
  switch (w & 0xff) {
    case '-':  // "--" or "/*" (their first bytes are above ' ', so they fold to themselves)
    case '/':
      return true;
    case 'l':
      return w == word4("list");
    case 'c':
      return w == word4("crea");
    case 'd':  // DECLARE, DISCARD ALL, DO
      return w == word4("decl") || w == word4("disc") ||
             ((w & 0xffff) == (word4("do  ") & 0xffff) && !sqlIdentChar(uint8_t(rest[2])));
    case 'p':
      return w == word4("prep");
    case 'r':  // RESET search_path / ALL
      return w == word4("rese");
    case 's':
      return (w & 0xffffff) == (word4("set ") & 0xffffff) && !sqlIdentChar(uint8_t(rest[3]));
    default:
      return false;
  }
}

// The prefilter saw a ';' or a '(': out of line, so that the common path needs no stack frame.
[[gnu::noinline]] SessionEffects afterPrefilterHit(std::string_view sql, unsigned hits) {
  if ((hits & kSemicolon) != 0 || hasCandidateCall(sql)) return lex(sql);
  return firstWordMayBeState(sql) ? lex(sql) : SessionEffects{};
}

}  // namespace

SearchPathAfter searchPathAfter(std::string_view sql) {
  SearchPathAfter after = SearchPathAfter::kUnchanged;
  forEachSqlStatement(sql, [&](const std::vector<Token>& t) {
    SessionEffects e;
    classify(t, e);
    if (!e.search_path) return false;
    auto at = [&](size_t k, std::string_view w) { return k < t.size() && eq(t[k], w); };
    size_t k = at(1, "session") ? 2 : 1;
    // Of the statements classify() flags, RESET and DISCARD only ever reset it.
    bool reset = at(0, "discard") || at(0, "reset") ||
                 (at(0, "set") && t.size() == k + 3 && isName(t[k], "search_path") &&
                  (at(k + 1, "to") || isPunct(t[k + 1], '=')) && at(k + 2, "default"));
    after = reset ? SearchPathAfter::kDefault : SearchPathAfter::kChanged;
    return false;
  });
  return after;
}

SessionEffects inspectSessionEffects(std::string_view sql) {
  // A trailing ';' (pgbench, many drivers) does not make a second statement.
  if (!sql.empty() && sql.back() == ';') sql.remove_suffix(1);
  if (unsigned hits = prefilter(sql); hits != 0) return afterPrefilterHit(sql, hits);
  return firstWordMayBeState(sql) ? lex(sql) : SessionEffects{};
}

}  // namespace sluice::protocol
