"""asyncpg in transaction mode (statement cache off, as PgBouncer users must run it)."""

import asyncio

import asyncpg
import pytest


def test_asyncpg_concurrent_tasks(poolers, pg):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 2})
    kw = p.conn_kwargs()

    async def task(i):
        conn = await asyncpg.connect(host=kw["host"], port=kw["port"], user=kw["user"],
                                     password=kw["password"], database=kw["dbname"],
                                     statement_cache_size=0, ssl=False, timeout=10)
        try:
            out = []
            for j in range(5):
                out.append(await conn.fetchval("SELECT $1::int * 1000 + $2::int", i, j))
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep(0.01)")
                    row = await conn.fetchrow("SELECT $1::text AS who, 42 AS n", f"task{i}")
                    assert (row["who"], row["n"]) == (f"task{i}", 42)
            return out
        finally:
            await conn.close()

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(task(i) for i in range(20))), 60)

    results = asyncio.run(main())
    assert results == [[i * 1000 + j for j in range(5)] for i in range(20)]
    assert pg.backend_count("sluice_md5") <= 2


def test_asyncpg_error_then_recovery(poolers):
    p = poolers(settings={"pool_mode": "transaction", "default_pool_size": 1})
    kw = p.conn_kwargs()

    async def main():
        conn = await asyncpg.connect(host=kw["host"], port=kw["port"], user=kw["user"],
                                     password=kw["password"], database=kw["dbname"],
                                     statement_cache_size=0, ssl=False, timeout=10)
        try:
            with pytest.raises(asyncpg.PostgresError) as exc:
                await conn.fetchval("SELECT 1 / $1::int", 0)
            assert exc.value.sqlstate == "22012"
            return await conn.fetchval("SELECT $1::int + 1", 41)
        finally:
            await conn.close()
    assert asyncio.run(main()) == 42
