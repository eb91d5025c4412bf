// A JSON Schema (draft 2020-12) validator for the subset of keywords the
// twinlet schemas use, so that the page refuses what the agent would
// refuse before anything is sent. Problems are located by JSON pointers
// into the document, as the agent's (Go) validator locates them:
// an unknown property at the property itself, other problems at the
// value that breaks the rule, the causes of a failed anyOf/oneOf branch
// by branch. The agent's validator (schemas/check.go) is this one in Go,
// with the same messages: a Go test runs this file in Chromium against a
// corpus and its mutations and checks that both find the same problems.
"use strict";

(function (global) {
  function escapePointer(s) {
    return String(s).replace(/~/g, "~0").replace(/\//g, "~1");
  }

  function typeOf(v) {
    if (v === null) return "null";
    if (Array.isArray(v)) return "array";
    if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
    return typeof v; // string, boolean, object
  }

  function typeMatches(v, t) {
    const have = typeOf(v);
    if (t === have) return true;
    return t === "number" && have === "integer";
  }

  function equal(a, b) {
    if (a === b) return true;
    const ta = typeOf(a), tb = typeOf(b);
    if ((ta === "integer" || ta === "number") && (tb === "integer" || tb === "number")) return a === b;
    if (ta !== tb) return false;
    if (ta === "array") {
      if (a.length !== b.length) return false;
      for (let i = 0; i < a.length; i++) if (!equal(a[i], b[i])) return false;
      return true;
    }
    if (ta === "object") {
      const ka = Object.keys(a), kb = Object.keys(b);
      if (ka.length !== kb.length) return false;
      for (const k of ka) if (!Object.prototype.hasOwnProperty.call(b, k) || !equal(a[k], b[k])) return false;
      return true;
    }
    return false;
  }

  function show(v) {
    return JSON.stringify(v);
  }

  const regexCache = new Map();
  function regex(p) {
    let re = regexCache.get(p);
    if (!re) {
      re = new RegExp(p, "u");
      regexCache.set(p, re);
    }
    return re;
  }

  function resolve(root, ref) {
    if (ref === "#") return root;
    if (!ref.startsWith("#/")) throw new Error("unsupported $ref " + ref);
    let s = root;
    for (const part of ref.slice(2).split("/")) {
      const key = decodeURIComponent(part).replace(/~1/g, "/").replace(/~0/g, "~");
      s = s && s[key];
    }
    if (s === undefined) throw new Error("unresolved $ref " + ref);
    return s;
  }

  // validate returns the problems of value against schema: an array of
  // {pointer, message}, empty when valid.
  function validate(schema, value) {
    const out = [];
    check(schema, schema, value, "", out);
    const seen = new Set();
    return out.filter((p) => {
      const k = p.pointer + "\u0000" + p.message;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
  }

  function valid(root, schema, value, ptr) {
    const out = [];
    check(root, schema, value, ptr, out);
    return out.length === 0;
  }

  function check(root, s, v, ptr, out) {
    if (s === true) return;
    if (s === false) {
      out.push({ pointer: ptr, message: "not allowed" });
      return;
    }
    if (s.$ref !== undefined) check(root, resolve(root, s.$ref), v, ptr, out);

    if (s.type !== undefined) {
      const types = Array.isArray(s.type) ? s.type : [s.type];
      if (!types.some((t) => typeMatches(v, t))) {
        out.push({ pointer: ptr, message: "expected " + types.join(" or ") + ", got " + typeOf(v) });
        return; // the other rules of the type do not apply
      }
    }
    if (s.enum !== undefined && !s.enum.some((e) => equal(e, v))) {
      out.push({ pointer: ptr, message: "must be one of " + s.enum.map(show).join(", ") });
    }
    if (s.const !== undefined && !equal(s.const, v)) {
      out.push({ pointer: ptr, message: "must be " + show(s.const) });
    }

    const t = typeOf(v);
    if (t === "string") {
      const n = [...v].length;
      if (s.minLength !== undefined && n < s.minLength) out.push({ pointer: ptr, message: "at least " + s.minLength + " characters, got " + n });
      if (s.maxLength !== undefined && n > s.maxLength) out.push({ pointer: ptr, message: "at most " + s.maxLength + " characters, got " + n });
      if (s.pattern !== undefined && !regex(s.pattern).test(v)) {
        out.push({ pointer: ptr, message: "invalid value" + (s.description ? ": " + firstSentence(s.description) : " (does not match " + s.pattern + ")") });
      }
    }
    if (t === "integer" || t === "number") {
      if (s.minimum !== undefined && v < s.minimum) out.push({ pointer: ptr, message: "must be >= " + s.minimum });
      if (s.maximum !== undefined && v > s.maximum) out.push({ pointer: ptr, message: "must be <= " + s.maximum });
      if (s.exclusiveMinimum !== undefined && v <= s.exclusiveMinimum) out.push({ pointer: ptr, message: "must be > " + s.exclusiveMinimum });
      if (s.exclusiveMaximum !== undefined && v >= s.exclusiveMaximum) out.push({ pointer: ptr, message: "must be < " + s.exclusiveMaximum });
      if (s.multipleOf !== undefined && !Number.isInteger(v / s.multipleOf)) out.push({ pointer: ptr, message: "must be a multiple of " + s.multipleOf });
    }
    if (t === "array") {
      if (s.minItems !== undefined && v.length < s.minItems) out.push({ pointer: ptr, message: "at least " + s.minItems + " items" });
      if (s.maxItems !== undefined && v.length > s.maxItems) out.push({ pointer: ptr, message: "at most " + s.maxItems + " items" });
      if (s.uniqueItems) {
        for (let i = 0; i < v.length; i++) {
          for (let j = i + 1; j < v.length; j++) {
            if (equal(v[i], v[j])) out.push({ pointer: ptr, message: "items " + i + " and " + j + " are equal" });
          }
        }
      }
      const prefix = s.prefixItems || [];
      prefix.forEach((ps, i) => {
        if (i < v.length) check(root, ps, v[i], ptr + "/" + i, out);
      });
      if (s.items !== undefined) {
        for (let i = prefix.length; i < v.length; i++) check(root, s.items, v[i], ptr + "/" + i, out);
      }
    }
    if (t === "object") {
      const keys = Object.keys(v);
      if (s.required) {
        const missing = s.required.filter((k) => !Object.prototype.hasOwnProperty.call(v, k));
        if (missing.length) out.push({ pointer: ptr, message: "missing " + missing.map((k) => "'" + k + "'").join(", ") });
      }
      if (s.minProperties !== undefined && keys.length < s.minProperties) out.push({ pointer: ptr, message: "at least " + s.minProperties + " properties" });
      if (s.maxProperties !== undefined && keys.length > s.maxProperties) out.push({ pointer: ptr, message: "at most " + s.maxProperties + " properties" });
      if (s.propertyNames !== undefined) {
        for (const k of keys) check(root, s.propertyNames, k, ptr + "/" + escapePointer(k), out);
      }
      const props = s.properties || {};
      const pats = s.patternProperties || {};
      for (const k of keys) {
        const p = ptr + "/" + escapePointer(k);
        let matched = false;
        if (Object.prototype.hasOwnProperty.call(props, k)) {
          matched = true;
          check(root, props[k], v[k], p, out);
        }
        for (const pat of Object.keys(pats)) {
          if (regex(pat).test(k)) {
            matched = true;
            check(root, pats[pat], v[k], p, out);
          }
        }
        if (!matched && s.additionalProperties !== undefined) {
          if (s.additionalProperties === false) out.push({ pointer: p, message: "unknown field '" + k + "'" });
          else check(root, s.additionalProperties, v[k], p, out);
        }
      }
      if (s.dependentRequired) {
        for (const k of Object.keys(s.dependentRequired)) {
          if (!Object.prototype.hasOwnProperty.call(v, k)) continue;
          const missing = s.dependentRequired[k].filter((d) => !Object.prototype.hasOwnProperty.call(v, d));
          if (missing.length) out.push({ pointer: ptr, message: "'" + k + "' needs " + missing.map((d) => "'" + d + "'").join(", ") });
        }
      }
      if (s.dependentSchemas) {
        for (const k of Object.keys(s.dependentSchemas)) {
          if (Object.prototype.hasOwnProperty.call(v, k)) check(root, s.dependentSchemas[k], v, ptr, out);
        }
      }
    }

    if (s.allOf) for (const sub of s.allOf) check(root, sub, v, ptr, out);
    if (s.anyOf) {
      const errs = [];
      let ok = false;
      for (const sub of s.anyOf) {
        const e = [];
        check(root, sub, v, ptr, e);
        if (e.length === 0) {
          ok = true;
          break;
        }
        errs.push(...e);
      }
      if (!ok) out.push(...errs);
    }
    if (s.oneOf) {
      const errs = [];
      const passed = [];
      s.oneOf.forEach((sub, i) => {
        const e = [];
        check(root, sub, v, ptr, e);
        if (e.length === 0) passed.push(i);
        else errs.push(...e);
      });
      if (passed.length === 0) out.push(...errs);
      else if (passed.length > 1) out.push({ pointer: ptr, message: "matches more than one of its alternatives (" + passed.join(", ") + ")" });
    }
    if (s.not !== undefined && valid(root, s.not, v, ptr)) {
      out.push({ pointer: ptr, message: "not allowed" });
    }
    if (s.if !== undefined) {
      if (valid(root, s.if, v, ptr)) {
        if (s.then !== undefined) check(root, s.then, v, ptr, out);
      } else if (s.else !== undefined) {
        check(root, s.else, v, ptr, out);
      }
    }
  }

  function firstSentence(d) {
    const i = d.indexOf(". ");
    return i > 0 ? d.slice(0, i) : d.replace(/\.$/, "");
  }

  global.TwinSchema = { validate: validate };
})(typeof window !== "undefined" ? window : globalThis);
