// Golden-byte tests for the pure wire codec. Every expected byte string is written by hand from
// the PostgreSQL protocol documentation ("Message Formats"), not produced by the code under test.
#include "protocol/wire.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <variant>

namespace sluice::protocol {
namespace {

using namespace std::string_literals;

// Shows bytes as hex so a golden mismatch is readable.
std::string hexDump(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (!out.empty()) out += ' ';
    out += kHex[c >> 4];
    out += kHex[c & 0xf];
  }
  return out;
}

#define EXPECT_BYTES(actual, expected) EXPECT_EQ(hexDump(actual), hexDump(expected))

// ---- builders ----

TEST(WireBuilders, ReadyForQuery) {
  std::string out;
  appendReadyForQuery(out, 'I');
  EXPECT_BYTES(out, "Z\0\0\0\x05I"s);
  out.clear();
  appendReadyForQuery(out, 'T');
  EXPECT_BYTES(out, "Z\0\0\0\x05T"s);
  out.clear();
  appendReadyForQuery(out, 'E');
  EXPECT_BYTES(out,
               "Z\0\0\0\x05"
               "E"s);
}

TEST(WireBuilders, ErrorResponseWithAllFields) {
  ErrorInfo e;
  e.severity = "FATAL";
  e.sqlstate = "28P01";
  e.message = "m";
  e.detail = "d";
  e.hint = "h";
  std::string out;
  appendError(out, e);
  // S and V carry the severity; then C, M, D, H; then the terminating NUL.
  // Payload: 7 + 7 + 7 + 3 + 3 + 3 + 1 = 31 bytes, length 35 = 0x23.
  EXPECT_BYTES(out, "E\0\0\0\x23SFATAL\0VFATAL\0C28P01\0Mm\0Dd\0Hh\0\0"s);
}

TEST(WireBuilders, ErrorResponseOmitsEmptyDetailAndHint) {
  ErrorInfo e;  // severity defaults to ERROR
  e.sqlstate = "42601";
  e.message = "syntax error";
  std::string out;
  appendError(out, e);
  // 7 + 7 + 7 + 14 + 1 = 36, length 40 = 0x28.
  EXPECT_BYTES(out, "E\0\0\0\x28SERROR\0VERROR\0C42601\0Msyntax error\0\0"s);
}

TEST(WireBuilders, NoticeResponse) {
  ErrorInfo e;
  e.severity = "NOTICE";
  e.sqlstate = "00000";
  e.message = "hi";
  e.hint = "x";
  std::string out;
  appendNotice(out, e);
  // 8 + 8 + 7 + 4 + 3 + 1 = 31, length 35 = 0x23.
  EXPECT_BYTES(out, "N\0\0\0\x23SNOTICE\0VNOTICE\0C00000\0Mhi\0Hx\0\0"s);
}

TEST(WireBuilders, ErrorResponseRoundTripsThroughParseErrorFields) {
  ErrorInfo e;
  e.severity = "FATAL";
  e.sqlstate = "57P01";
  e.message = "terminating connection";
  e.detail = "detail text";
  std::string out;
  appendError(out, e);
  auto fields = parseErrorFields(std::string_view(out).substr(kHeaderSize));
  EXPECT_EQ(fields.size(), 5u);
  EXPECT_EQ(fields['S'], "FATAL");
  EXPECT_EQ(fields['V'], "FATAL");
  EXPECT_EQ(fields['C'], "57P01");
  EXPECT_EQ(fields['M'], "terminating connection");
  EXPECT_EQ(fields['D'], "detail text");
}

TEST(WireBuilders, AuthenticationRequests) {
  std::string out;
  appendAuthRequest(out, kAuthOk);
  EXPECT_BYTES(out, "R\0\0\0\x08\0\0\0\0"s);

  out.clear();
  appendAuthRequest(out, kAuthCleartext);
  EXPECT_BYTES(out, "R\0\0\0\x08\0\0\0\x03"s);

  out.clear();
  const char salt[] = {'\x01', '\xfe', '\0', '\x7f'};
  appendAuthRequest(out, kAuthMd5, std::string_view(salt, 4));
  EXPECT_BYTES(out, "R\0\0\0\x0c\0\0\0\x05\x01\xfe\0\x7f"s);

  out.clear();
  appendAuthRequest(out, kAuthSasl, std::string_view("SCRAM-SHA-256\0\0", 15));
  // 4 + 4 + 15 = 23 = 0x17.
  EXPECT_BYTES(out, "R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"s);

  out.clear();
  appendAuthRequest(out, kAuthSaslContinue, "r=abc");
  EXPECT_BYTES(out, "R\0\0\0\x0d\0\0\0\x0br=abc"s);

  out.clear();
  appendAuthRequest(out, kAuthSaslFinal, "v=xyz");
  EXPECT_BYTES(out, "R\0\0\0\x0d\0\0\0\x0cv=xyz"s);
}

TEST(WireBuilders, ParameterStatus) {
  std::string out;
  appendParameterStatus(out, "client_encoding", "UTF8");
  // 4 + 16 + 5 = 25 = 0x19.
  EXPECT_BYTES(out,
               "S\0\0\0\x19"
               "client_encoding\0UTF8\0"s);
}

TEST(WireBuilders, BackendKeyData) {
  std::string out;
  appendBackendKeyData(out, 0x01020304u, 0xdeadbeefu);
  EXPECT_BYTES(out, "K\0\0\0\x0c\x01\x02\x03\x04\xde\xad\xbe\xef"s);
}

TEST(WireBuilders, Query) {
  std::string out;
  appendQuery(out, "SELECT 1");
  EXPECT_BYTES(out, "Q\0\0\0\x0dSELECT 1\0"s);
}

TEST(WireBuilders, Terminate) {
  std::string out;
  appendTerminate(out);
  EXPECT_BYTES(out, "X\0\0\0\x04"s);
}

TEST(WireBuilders, PasswordMessage) {
  std::string out;
  appendPassword(out, "secret");
  EXPECT_BYTES(out, "p\0\0\0\x0bsecret\0"s);
}

TEST(WireBuilders, SaslInitialResponse) {
  std::string out;
  appendSaslInitialResponse(out, "SCRAM-SHA-256", "n,,n=,r=abc");
  // 14 (mechanism + NUL) + 4 (length 11) + 11 = 29, length 33 = 0x21.
  EXPECT_BYTES(out, "p\0\0\0\x21SCRAM-SHA-256\0\0\0\0\x0bn,,n=,r=abc"s);
}

TEST(WireBuilders, SaslResponse) {
  std::string out;
  appendSaslResponse(out, "c=biws,r=x");
  // No NUL: the SASL data is the rest of the message. 4 + 10 = 14.
  EXPECT_BYTES(out,
               "p\0\0\0\x0e"
               "c=biws,r=x"s);
}

TEST(WireBuilders, StartupMessage) {
  std::string out;
  appendStartup(out, {{"user", "alice"}, {"database", "db"}});
  // 4 (length) + 4 (3.0 = 0x00030000) + 11 + 12 + 1 = 32 = 0x20.
  EXPECT_BYTES(out, "\0\0\0\x20\0\x03\0\0user\0alice\0database\0db\0\0"s);
}

TEST(WireBuilders, StartupMessageWithoutParams) {
  std::string out;
  appendStartup(out, {});
  EXPECT_BYTES(out, "\0\0\0\x09\0\x03\0\0\0"s);
}

TEST(WireBuilders, CancelRequest) {
  std::string out;
  appendCancelRequest(out, 0x00000102u, 0xa1b2c3d4u);
  ASSERT_EQ(out.size(), 16u);
  // 80877102 = 0x04d2162e (1234 << 16 | 5678).
  EXPECT_BYTES(out, "\0\0\0\x10\x04\xd2\x16\x2e\0\0\x01\x02\xa1\xb2\xc3\xd4"s);
}

TEST(WireBuilders, RowDescription) {
  std::string out;
  appendRowDescription(out, {"a", "n"}, {25, 20});
  // Per column: name NUL, table oid int32, column int16, type oid int32, typlen int16,
  // typmod int32, format int16. text has typlen -1, int8 has 8.
  std::string col_a =
      "a\0"s + "\0\0\0\0"s + "\0\0"s + "\0\0\0\x19"s + "\xff\xff"s + "\xff\xff\xff\xff"s + "\0\0"s;
  std::string col_n =
      "n\0"s + "\0\0\0\0"s + "\0\0"s + "\0\0\0\x14"s + "\0\x08"s + "\xff\xff\xff\xff"s + "\0\0"s;
  // 2 + 20 + 20 = 42, length 46 = 0x2e.
  EXPECT_BYTES(out, "T\0\0\0\x2e\0\x02"s + col_a + col_n);
}

TEST(WireBuilders, RowDescriptionInt4AndMissingOidDefaultsToText) {
  std::string out;
  appendRowDescription(out, {"i", "t"}, {23});
  std::string col_i =
      "i\0"s + "\0\0\0\0"s + "\0\0"s + "\0\0\0\x17"s + "\0\x04"s + "\xff\xff\xff\xff"s + "\0\0"s;
  std::string col_t =
      "t\0"s + "\0\0\0\0"s + "\0\0"s + "\0\0\0\x19"s + "\xff\xff"s + "\xff\xff\xff\xff"s + "\0\0"s;
  EXPECT_BYTES(out, "T\0\0\0\x2e\0\x02"s + col_i + col_t);
}

TEST(WireBuilders, RowDescriptionNoColumns) {
  std::string out;
  appendRowDescription(out, {}, {});
  EXPECT_BYTES(out, "T\0\0\0\x06\0\0"s);
}

TEST(WireBuilders, DataRowWithNull) {
  std::string out;
  appendDataRow(out, {std::string("1"), std::nullopt, std::string("")});
  // 2 + (4 + 1) + 4 + 4 = 15, length 19 = 0x13. NULL is length -1 with no bytes; the empty
  // string is length 0.
  EXPECT_BYTES(out,
               "D\0\0\0\x13\0\x03\0\0\0\x01"
               "1\xff\xff\xff\xff\0\0\0\0"s);
}

TEST(WireBuilders, CommandComplete) {
  std::string out;
  appendCommandComplete(out, "SHOW");
  EXPECT_BYTES(out, "C\0\0\0\x09SHOW\0"s);
}

TEST(WireBuilders, EmptyQueryResponse) {
  std::string out;
  appendEmptyQueryResponse(out);
  EXPECT_BYTES(out, "I\0\0\0\x04"s);
}

TEST(WireBuilders, AppendsAfterExistingBytes) {
  // The length is patched relative to where the message starts, not to the buffer start.
  std::string out = "junk";
  appendCommandComplete(out, "SELECT 1");
  appendReadyForQuery(out, 'I');
  appendStartup(out, {{"user", "u"}});
  EXPECT_BYTES(out, "junk"s + "C\0\0\0\x0dSELECT 1\0"s + "Z\0\0\0\x05I"s +
                        "\0\0\0\x10\0\x03\0\0user\0u\0\0"s);
}

TEST(WireWriter, LengthCountsItselfButNotTheType) {
  std::string out;
  Writer w(out);
  w.begin('x');
  w.int16(-2);
  w.int32(-1);
  w.byte(0x80);
  w.cstring("ab");
  w.bytes(std::string_view("\0z", 2));
  w.end();
  // 4 + 2 + 4 + 1 + 3 + 2 = 16.
  EXPECT_BYTES(out,
               "x\0\0\0\x10\xff\xfe\xff\xff\xff\xff\x80"
               "ab\0\0z"s);
}

// ---- peekHeader ----

TEST(WirePeekHeader, NeedsFiveBytes) {
  EXPECT_FALSE(peekHeader(""));
  EXPECT_FALSE(peekHeader("Z"));
  EXPECT_FALSE(peekHeader("Z\0\0\0"s));
  auto h = peekHeader("Z\0\0\0\x05"s);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->type, 'Z');
  EXPECT_EQ(h->length, 5u);
  EXPECT_EQ(h->total(), 6u);
}

TEST(WirePeekHeader, ReadsOnlyTheHeader) {
  auto h = peekHeader("D\x01\x02\x03\x04more"s);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->type, 'D');
  EXPECT_EQ(h->length, 0x01020304u);
  EXPECT_EQ(h->total(), 0x01020305u);
}

TEST(WirePeekHeader, HugeAndTinyLengthsDoNotWrap) {
  auto h = peekHeader("E\xff\xff\xff\xff"s);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->length, 0xffffffffu);
  EXPECT_EQ(h->total(), size_t(0xffffffffu) + 1);  // no 32-bit wraparound to 0
  auto z = peekHeader("E\0\0\0\0"s);
  ASSERT_TRUE(z);
  EXPECT_EQ(z->length, 0u);  // below 4: the caller must reject it
}

// ---- Reader ----

TEST(WireReader, ReadsBigEndianFields) {
  std::string data =
      "\x01\x02\x03\x04\xff\xfe\x80"
      "abc\0\0rest"s;
  Reader r(data);
  EXPECT_EQ(r.int32(), 0x01020304);
  EXPECT_EQ(r.int16(), -2);
  EXPECT_EQ(r.byte(), 0x80);
  EXPECT_EQ(r.cstring(), "abc");
  EXPECT_EQ(r.cstring(), "");
  EXPECT_EQ(r.rest(), "rest");
  EXPECT_EQ(r.bytes(2), "re");
  EXPECT_FALSE(r.atEnd());
  EXPECT_EQ(r.bytes(2), "st");
  EXPECT_TRUE(r.atEnd());
  EXPECT_FALSE(r.failed());
  EXPECT_EQ(r.bytes(0), "");
  EXPECT_FALSE(r.failed());
}

TEST(WireReader, NegativeInt32) {
  std::string data = "\xff\xff\xff\xff"s;
  Reader r(data);
  EXPECT_EQ(r.int32(), -1);
  EXPECT_FALSE(r.failed());
}

TEST(WireReader, EmptyPayload) {
  Reader r("");
  EXPECT_TRUE(r.atEnd());
  EXPECT_EQ(r.rest(), "");
  EXPECT_EQ(r.byte(), 0);
  EXPECT_TRUE(r.failed());
}

// Every read runs over a view that is a strict prefix of a larger buffer whose next bytes would
// satisfy the read: a reader that looked past its end would succeed instead of failing.
TEST(WireReader, ShortInt32FailsWithoutReadingPastTheEnd) {
  std::string buf = "\x01\x02\x03\x04"s;
  Reader r(std::string_view(buf).substr(0, 3));
  EXPECT_EQ(r.int32(), 0);
  EXPECT_TRUE(r.failed());
}

TEST(WireReader, ShortInt16Fails) {
  std::string buf = "\x01\x02"s;
  Reader r(std::string_view(buf).substr(0, 1));
  EXPECT_EQ(r.int16(), 0);
  EXPECT_TRUE(r.failed());
}

TEST(WireReader, ShortByteFails) {
  std::string buf = "ab";
  Reader r(std::string_view(buf).substr(0, 1));
  EXPECT_EQ(r.byte(), 'a');
  EXPECT_EQ(r.byte(), 0);
  EXPECT_TRUE(r.failed());
}

TEST(WireReader, CstringWithoutNulInsideTheViewFails) {
  std::string buf = "abc\0"s;
  Reader r(std::string_view(buf).substr(0, 3));
  EXPECT_EQ(r.cstring(), "");
  EXPECT_TRUE(r.failed());
}

TEST(WireReader, ShortBytesFails) {
  std::string buf = "abcd";
  Reader r(std::string_view(buf).substr(0, 3));
  EXPECT_EQ(r.bytes(4), "");
  EXPECT_TRUE(r.failed());
}

TEST(WireReader, HugeByteCountDoesNotOverflow) {
  Reader r("abc");
  EXPECT_EQ(r.byte(), 'a');
  EXPECT_EQ(r.bytes(std::numeric_limits<size_t>::max()), "");
  EXPECT_TRUE(r.failed());
}

TEST(WireReader, FailureIsSticky) {
  // Fail once, then every later read fails too, even ones that would fit.
  std::string data = "\x01\x02\x03"s + "ok\0"s + "\x00\x00\x00\x07"s;
  Reader s(data);
  EXPECT_EQ(s.bytes(100), "");
  EXPECT_TRUE(s.failed());
  EXPECT_EQ(s.int16(), 0);
  EXPECT_EQ(s.byte(), 0);
  EXPECT_EQ(s.cstring(), "");
  EXPECT_EQ(s.bytes(1), "");
  EXPECT_EQ(s.int32(), 0);
  EXPECT_TRUE(s.failed());
}

// ---- parseStartupPacket ----

std::string startupPacket(std::string_view body) {
  std::string out(4, '\0');
  uint32_t len = uint32_t(body.size() + 4);
  out[0] = char(len >> 24);
  out[1] = char(len >> 16);
  out[2] = char(len >> 8);
  out[3] = char(len);
  out.append(body);
  return out;
}

std::string errorOf(const StartupPacket& p) {
  if (auto* e = std::get_if<StartupError>(&p)) return e->message;
  return "<not an error>";
}

TEST(WireStartup, SslRequest) {
  auto p = parseStartupPacket("\0\0\0\x08\x04\xd2\x16\x2f"s);
  EXPECT_TRUE(std::holds_alternative<SslRequest>(p)) << errorOf(p);
}

TEST(WireStartup, GssEncRequest) {
  auto p = parseStartupPacket("\0\0\0\x08\x04\xd2\x16\x30"s);
  EXPECT_TRUE(std::holds_alternative<GssEncRequest>(p)) << errorOf(p);
}

TEST(WireStartup, SslAndGssRequestsWithExtraBytesAreRejected) {
  auto ssl = parseStartupPacket("\0\0\0\x0c\x04\xd2\x16\x2f\0\0\0\0"s);
  EXPECT_EQ(errorOf(ssl), "invalid SSLRequest length");
  auto gss = parseStartupPacket("\0\0\0\x0c\x04\xd2\x16\x30\0\0\0\0"s);
  EXPECT_EQ(errorOf(gss), "invalid GSSENCRequest length");
}

TEST(WireStartup, CancelRequest) {
  auto p = parseStartupPacket("\0\0\0\x10\x04\xd2\x16\x2e\x80\0\0\x01\xa1\xb2\xc3\xd4"s);
  auto* c = std::get_if<CancelRequest>(&p);
  ASSERT_TRUE(c) << errorOf(p);
  EXPECT_EQ(c->pid, 0x80000001u);
  EXPECT_EQ(c->key, 0xa1b2c3d4u);
}

TEST(WireStartup, CancelRequestRoundTrip) {
  std::string out;
  appendCancelRequest(out, 4242, 0xffffffffu);
  auto p = parseStartupPacket(out);
  auto* c = std::get_if<CancelRequest>(&p);
  ASSERT_TRUE(c) << errorOf(p);
  EXPECT_EQ(c->pid, 4242u);
  EXPECT_EQ(c->key, 0xffffffffu);
}

TEST(WireStartup, CancelRequestWithWrongLength) {
  auto shorter = parseStartupPacket("\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01"s);
  EXPECT_EQ(errorOf(shorter), "invalid CancelRequest length");
  auto longer = parseStartupPacket("\0\0\0\x14\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02\0\0\0\x03"s);
  EXPECT_EQ(errorOf(longer), "invalid CancelRequest length");
}

TEST(WireStartup, RealStartupMessage) {
  std::string packet =
      "\0\0\0\x41\0\x03\0\0user\0alice\0database\0shop\0application_name\0psql\0"
      "options\0\0\0"s;
  ASSERT_EQ(packet.size(), 0x41u);
  auto p = parseStartupPacket(packet);
  auto* m = std::get_if<StartupMessage>(&p);
  ASSERT_TRUE(m) << errorOf(p);
  EXPECT_EQ(m->version, kProtocolVersion3);
  ASSERT_EQ(m->params.size(), 4u);
  EXPECT_EQ(m->params[0], (std::pair<std::string, std::string>("user", "alice")));
  EXPECT_EQ(m->params[1], (std::pair<std::string, std::string>("database", "shop")));
  EXPECT_EQ(m->params[2], (std::pair<std::string, std::string>("application_name", "psql")));
  EXPECT_EQ(m->params[3], (std::pair<std::string, std::string>("options", "")));
  ASSERT_TRUE(m->find("user"));
  EXPECT_EQ(*m->find("user"), "alice");
  ASSERT_TRUE(m->find("application_name"));
  EXPECT_EQ(*m->find("application_name"), "psql");
  EXPECT_EQ(m->find("User"), nullptr);  // keys are case-sensitive, as in PostgreSQL
  EXPECT_EQ(m->find("missing"), nullptr);
}

TEST(WireStartup, RoundTripsAppendStartup) {
  std::string out;
  appendStartup(out, {{"user", "bob"}, {"database", "d"}, {"application_name", "x y"}});
  auto p = parseStartupPacket(out);
  auto* m = std::get_if<StartupMessage>(&p);
  ASSERT_TRUE(m) << errorOf(p);
  ASSERT_EQ(m->params.size(), 3u);
  EXPECT_EQ(*m->find("application_name"), "x y");
}

TEST(WireStartup, NoParamsIsWellFormed) {
  auto p = parseStartupPacket("\0\0\0\x09\0\x03\0\0\0"s);
  auto* m = std::get_if<StartupMessage>(&p);
  ASSERT_TRUE(m) << errorOf(p);
  EXPECT_TRUE(m->params.empty());
}

TEST(WireStartup, LengthMismatch) {
  // Says 9 bytes, has 8; says 8, has 9.
  EXPECT_EQ(errorOf(parseStartupPacket("\0\0\0\x09\0\x03\0\0"s)), "startup packet length mismatch");
  EXPECT_EQ(errorOf(parseStartupPacket("\0\0\0\x08\0\x03\0\0\0"s)),
            "startup packet length mismatch");
  EXPECT_EQ(errorOf(parseStartupPacket("\xff\xff\xff\xff\0\x03\0\0\0"s)),
            "startup packet length mismatch");
}

TEST(WireStartup, MissingTerminator) {
  auto p = parseStartupPacket(startupPacket("\0\x03\0\0user\0alice\0"s));
  EXPECT_EQ(errorOf(p), "invalid startup packet layout: missing terminator");
  // A key without its NUL.
  auto q = parseStartupPacket(startupPacket("\0\x03\0\0user"s));
  EXPECT_EQ(errorOf(q), "invalid startup packet layout: missing terminator");
}

TEST(WireStartup, MissingValue) {
  auto p = parseStartupPacket(startupPacket("\0\x03\0\0user\0"s));
  EXPECT_EQ(errorOf(p), "invalid startup packet layout: missing value");
  auto q = parseStartupPacket(startupPacket("\0\x03\0\0user\0alice"s));
  EXPECT_EQ(errorOf(q), "invalid startup packet layout: missing value");
}

TEST(WireStartup, TrailingBytes) {
  auto p = parseStartupPacket(startupPacket("\0\x03\0\0user\0alice\0\0junk"s));
  EXPECT_EQ(errorOf(p), "invalid startup packet layout: trailing bytes");
  auto q = parseStartupPacket(startupPacket("\0\x03\0\0\0\0"s));
  EXPECT_EQ(errorOf(q), "invalid startup packet layout: trailing bytes");
}

TEST(WireStartup, Protocol2IsRejectedNaming30) {
  auto p = parseStartupPacket(startupPacket("\0\x02\0\0user\0alice\0\0"s));
  std::string msg = errorOf(p);
  EXPECT_NE(msg.find("2.0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("3.0"), std::string::npos) << msg;
  EXPECT_EQ(msg, "unsupported frontend protocol 2.0: server supports 3.0");
}

TEST(WireStartup, OtherUnknownCodesAreRejected) {
  EXPECT_EQ(errorOf(parseStartupPacket("\0\0\0\x08\0\x04\0\x01"s)),
            "unsupported frontend protocol 4.1: server supports 3.0");
  EXPECT_EQ(errorOf(parseStartupPacket("\0\0\0\x08\0\0\0\0"s)),
            "unsupported frontend protocol 0.0: server supports 3.0");
  // A negative code must not be mistaken for anything (arithmetic shift keeps it negative).
  std::string neg = errorOf(parseStartupPacket("\0\0\0\x08\xff\x03\0\0"s));
  EXPECT_EQ(neg.find("unsupported frontend protocol"), 0u) << neg;
}

TEST(WireStartup, Protocol3MinorVersionIsKept) {
  auto p = parseStartupPacket(startupPacket("\0\x03\0\x02user\0u\0\0"s));
  auto* m = std::get_if<StartupMessage>(&p);
  ASSERT_TRUE(m) << errorOf(p);
  EXPECT_EQ(m->version, 0x00030002);
}

TEST(WireStartup, TooShort) {
  EXPECT_EQ(errorOf(parseStartupPacket("")), "startup packet too short");
  EXPECT_EQ(errorOf(parseStartupPacket("\0\0\0\x04"s)), "startup packet too short");
  EXPECT_EQ(errorOf(parseStartupPacket("\0\0\0\x07\x04\xd2\x16"s)), "startup packet too short");
}

// ---- parseErrorFields ----

TEST(WireErrorFields, ParsesAPostgresErrorPayload) {
  std::string payload =
      "SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"bob\"\0"
      "Fauth.c\0L335\0Rauth_failed\0\0"s;
  auto f = parseErrorFields(payload);
  EXPECT_EQ(f.size(), 7u);
  EXPECT_EQ(f['C'], "28P01");
  EXPECT_EQ(f['M'], "password authentication failed for user \"bob\"");
  EXPECT_EQ(f['F'], "auth.c");
  EXPECT_EQ(f['L'], "335");
  EXPECT_EQ(f['R'], "auth_failed");
}

TEST(WireErrorFields, StopsAtTerminator) {
  auto f = parseErrorFields("Mone\0\0Mtwo\0"s);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f['M'], "one");
}

TEST(WireErrorFields, LaterDuplicateWins) {
  auto f = parseErrorFields("Mone\0Mtwo\0\0"s);
  EXPECT_EQ(f['M'], "two");
}

TEST(WireErrorFields, TruncatedPayloadKeepsCompleteFields) {
  // No terminator and a last field without its NUL: the complete fields survive, the torn one
  // is dropped.
  auto f = parseErrorFields("SERROR\0C42601\0Msyntax"s);
  EXPECT_EQ(f.size(), 2u);
  EXPECT_EQ(f['S'], "ERROR");
  EXPECT_EQ(f['C'], "42601");
  EXPECT_EQ(f.count('M'), 0u);
}

TEST(WireErrorFields, EmptyAndTerminatorOnly) {
  EXPECT_TRUE(parseErrorFields("").empty());
  EXPECT_TRUE(parseErrorFields("\0"s).empty());
  EXPECT_TRUE(parseErrorFields("M"s).empty());
}

// ---- quoting ----

TEST(WireQuote, Literal) {
  EXPECT_EQ(quoteLiteral(""), "''");
  EXPECT_EQ(quoteLiteral("UTF8"), "'UTF8'");
  EXPECT_EQ(quoteLiteral("it's"), "'it''s'");
  EXPECT_EQ(quoteLiteral("''"), "''''''");
  EXPECT_EQ(quoteLiteral("a\"b"), "'a\"b'");
  EXPECT_EQ(quoteLiteral("Europe/Berlin"), "'Europe/Berlin'");
}

TEST(WireQuote, LiteralWithBackslashIsSafeWhateverStandardConformingStrings) {
  // Like PostgreSQL's quote_literal(): an E'' literal with doubled backslashes means the same
  // thing with standard_conforming_strings on or off. (A client can set it off on a server that
  // is later synced for another client.)
  EXPECT_EQ(quoteLiteral("C:\\app"), "E'C:\\\\app'");
  EXPECT_EQ(quoteLiteral("x\\"), "E'x\\\\'");
  EXPECT_EQ(quoteLiteral("\\'; DROP TABLE t; --"), "E'\\\\''; DROP TABLE t; --'");
}

TEST(WireQuote, Ident) {
  EXPECT_EQ(quoteIdent(""), "\"\"");
  EXPECT_EQ(quoteIdent("users"), "\"users\"");
  EXPECT_EQ(quoteIdent("a\"b"), "\"a\"\"b\"");
  EXPECT_EQ(quoteIdent("it's"), "\"it's\"");
  EXPECT_EQ(quoteIdent("My Table"), "\"My Table\"");
}

// ---- never crash ----

// Feeds every prefix (with the original and with a patched length word) and seeded random byte
// strings to the decoders. The assertions are weak on purpose; the point is that ASan/UBSan and
// the Reader's bounds checks see every path.
TEST(WireNeverCrash, StartupPacketPrefixesAndRandomBytes) {
  const std::string good = "\0\0\0\x31\0\x03\0\0user\0alice\0database\0shop\0options\0-c x=1\0\0"s;
  ASSERT_EQ(good.size(), 0x31u);
  ASSERT_TRUE(std::holds_alternative<StartupMessage>(parseStartupPacket(good)));
  for (size_t n = 0; n < good.size(); ++n) {
    std::string_view prefix = std::string_view(good).substr(0, n);
    EXPECT_TRUE(std::holds_alternative<StartupError>(parseStartupPacket(prefix))) << n;
    if (n >= 8) {
      // Same bytes with a consistent length: reaches the parameter parser.
      std::string patched = startupPacket(prefix.substr(4));
      auto p = parseStartupPacket(patched);
      EXPECT_TRUE(std::holds_alternative<StartupError>(p) ||
                  std::holds_alternative<StartupMessage>(p))
          << n;
    }
  }

  std::mt19937 rng(20240607);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> len(0, 48);
  std::uniform_int_distribution<int> small(0, 3);  // bias toward NULs and letters
  const int32_t codes[] = {kProtocolVersion3, kSslRequestCode, kGssEncRequestCode,
                           kCancelRequestCode, 0x00020000};
  for (int i = 0; i < 20000; ++i) {
    std::string body;
    int n = len(rng);
    for (int j = 0; j < n; ++j) {
      int k = small(rng);
      body.push_back(k == 0 ? '\0' : (k == 1 ? char('a' + byte(rng) % 26) : char(byte(rng))));
    }
    // Raw random bytes.
    (void)parseStartupPacket(body);
    // A valid length and a known code in front, so the deep paths run.
    int32_t code = codes[size_t(i) % std::size(codes)];
    std::string with_code;
    for (int shift = 24; shift >= 0; shift -= 8) with_code.push_back(char(uint32_t(code) >> shift));
    with_code += body;
    auto p = parseStartupPacket(startupPacket(with_code));
    if (auto* m = std::get_if<StartupMessage>(&p)) {
      EXPECT_EQ(m->version, kProtocolVersion3);
      for (const auto& [k, v] : m->params) EXPECT_FALSE(k.empty());
    }
  }
}

TEST(WireNeverCrash, ErrorFieldsPrefixesAndRandomBytes) {
  const std::string good = "SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0P15\0\0"s;
  const auto full = parseErrorFields(good);
  ASSERT_EQ(full.size(), 5u);
  for (size_t n = 0; n <= good.size(); ++n) {
    auto f = parseErrorFields(std::string_view(good).substr(0, n));
    // A prefix yields a subset of the full fields, never a torn value.
    for (const auto& [k, v] : f) {
      ASSERT_TRUE(full.count(k)) << n;
      EXPECT_EQ(v, full.at(k)) << n;
    }
  }

  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> len(0, 64);
  for (int i = 0; i < 20000; ++i) {
    std::string s;
    int n = len(rng);
    for (int j = 0; j < n; ++j) s.push_back(byte(rng) % 4 == 0 ? '\0' : char(byte(rng)));
    auto f = parseErrorFields(s);
    EXPECT_EQ(f.count('\0'), 0u);
  }
}

}  // namespace
}  // namespace sluice::protocol
