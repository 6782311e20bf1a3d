// `sql` for JavaScript plugins built against the `sql-handler` world: the
// build puts this file after pgevents-sdk.js (`WORLD=sql-handler ./build.sh`
// in a project `pgevents-host new NAME --lang js` wrote). Then, in a handler:
//
//   const n = sql.execute('INSERT INTO audit (item, note) VALUES ($1, $2)', row.id, row.note);
//   const { total } = sql.queryOne('SELECT count(*) AS total FROM audit');
//
// Parameters: null/undefined, booleans, numbers, BigInts, strings, Dates (as
// ISO text), Uint8Arrays (bytea), and plain objects or arrays (JSON, BigInts
// as their exact digits). Text binds to any column type (uuid, numeric,
// timestamptz). Results: integers as numbers (as BigInts beyond 2^53),
// floats as numbers, text (numeric as its exact decimal text, uuid and
// timestamps as the host renders them) as strings, bytea as Uint8Arrays, NULL
// as null, and json columns by JSON.parse (so their numbers are doubles: cast
// in the query, `(doc->>'total')::text`, for an exact one).

import { query as sqlQuery, execute as sqlExecute } from 'pgevents:plugin/sql@0.1.1';

const S64_MIN = -(2n ** 63n);
const S64_MAX = 2n ** 63n - 1n;

/** A JavaScript value as the WIT `value` the host binds. */
function sqlParam(value, n) {
  if (value === null || value === undefined) return { tag: 'null' };
  switch (typeof value) {
    case 'boolean':
      return { tag: 'boolean', val: value };
    case 'bigint':
      return value >= S64_MIN && value <= S64_MAX ? { tag: 'int', val: value } : { tag: 'text', val: String(value) };
    case 'number':
      // -0 as a float: float8 keeps the sign.
      return Number.isSafeInteger(value) && !Object.is(value, -0)
        ? { tag: 'int', val: BigInt(value) } : { tag: 'float', val: value };
    case 'string':
      return { tag: 'text', val: value };
    default:
  }
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) throw new TypeError(`sql: parameter $${n} is an invalid Date`);
    return { tag: 'text', val: value.toISOString() };
  }
  if (value instanceof Uint8Array) return { tag: 'bytes', val: value };
  const proto = Object.getPrototypeOf(value);
  if (Array.isArray(value) || proto === Object.prototype || proto === null) {
    try {
      return { tag: 'json', val: jsonText(value) };
    } catch (error) {
      throw new TypeError(`sql: parameter $${n} is not JSON: ${error.message}`);
    }
  }
  throw new TypeError(
    `sql: parameter $${n} is a ${value.constructor?.name ?? typeof value}; pass null, a boolean, number, `
      + 'BigInt, string, Date, Uint8Array, or a plain object or array (JSON)',
  );
}

/** A WIT `value` of a result as JavaScript. */
function sqlResult(value) {
  switch (value.tag) {
    case 'null':
      return null;
    case 'int': {
      const n = Number(value.val);
      return Number.isSafeInteger(n) ? n : value.val;
    }
    case 'json':
      return JSON.parse(value.val);
    case 'bytes': {
      // The bindings hand over a typed array of their own; give a Uint8Array.
      const v = value.val;
      if (v instanceof Uint8Array) return v;
      return ArrayBuffer.isView(v) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : Uint8Array.from(v);
    }
    default:
      return value.val;
  }
}

/** Call the host's `name` with `params` converted; a failed statement throws SqlError. */
function sqlCall(call, statement, params) {
  const values = params.map((v, i) => sqlParam(v, i + 1));
  try {
    return call(statement, values);
  } catch (error) {
    const payload = importError(error);
    if (payload && typeof payload.sqlstate === 'string') throw new SqlError(payload.sqlstate, payload.message);
    throw error;
  }
}

Object.assign(sql, {
  query(statement, ...params) {
    const result = sqlCall(sqlQuery, statement, params);
    return result.rows.map((row) => Object.fromEntries(result.columns.map((c, i) => [c, sqlResult(row[i])])));
  },
  queryOne(statement, ...params) {
    return sql.query(statement, ...params)[0];
  },
  execute(statement, ...params) {
    return Number(sqlCall(sqlExecute, statement, params));
  },
});
