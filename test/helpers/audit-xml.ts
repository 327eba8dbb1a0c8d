// Audit messages read back in tests: a minimal, strict XML 1.0 parser and the PS3.15 A.5.1 structure check
// (element order and required parts), plus accessors for the participant objects the tests assert.
import assert from 'node:assert/strict';

// ------------------------------------------------------------------ a minimal, strict XML 1.0 parser

export interface XNode {
  name: string;
  attrs: Record<string, string>;
  children: XNode[];
  text: string;
}

const NAME = /^[A-Za-z_:][A-Za-z0-9_.:-]*/;
// XML 1.0 section 2.2 Char.
const XML_CHAR = /^[\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]*$/u;

function decodeEntities(raw: string, where: string): string {
  return raw.replace(/&([^;]*);?/g, (m, body: string) => {
    assert.ok(m.endsWith(';'), `unterminated reference in ${where}`);
    const named: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
    if (body in named) return named[body] as string;
    let cp: number;
    if (/^#x[0-9A-Fa-f]+$/.test(body)) cp = parseInt(body.slice(2), 16);
    else if (/^#[0-9]+$/.test(body)) cp = parseInt(body.slice(1), 10);
    else assert.fail(`unknown entity &${body}; in ${where}`);
    const ch = String.fromCodePoint(cp);
    assert.match(ch, XML_CHAR, `character reference &${body}; is not an XML Char`);
    return ch;
  });
}

/** Parses a document with one root element; throws (assert) on anything not well-formed. */
export function parseXml(src: string): XNode {
  assert.match(src, XML_CHAR, 'document holds characters XML 1.0 does not allow');
  let pos = 0;
  const skipWs = (): void => {
    while (pos < src.length && /\s/.test(src[pos] as string)) pos++;
  };
  const parseElement = (): XNode => {
    assert.equal(src[pos], '<', `expected < at ${pos}`);
    pos++;
    const name = NAME.exec(src.slice(pos))?.[0];
    assert.ok(name, `bad element name at ${pos}`);
    pos += name.length;
    const node: XNode = { name, attrs: {}, children: [], text: '' };
    for (;;) {
      const before = pos;
      skipWs();
      if (src.startsWith('/>', pos)) {
        pos += 2;
        return node;
      }
      if (src[pos] === '>') {
        pos++;
        break;
      }
      assert.ok(pos > before, `attributes of <${name}> must be separated by whitespace (at ${pos})`);
      const attr = NAME.exec(src.slice(pos))?.[0];
      assert.ok(attr, `bad attribute name in <${name}> at ${pos}`);
      pos += attr.length;
      assert.equal(src[pos], '=', `expected = after ${attr}`);
      pos++;
      const quote = src[pos];
      assert.ok(quote === '"' || quote === "'", `attribute ${attr} must be quoted`);
      const end = src.indexOf(quote, pos + 1);
      assert.ok(end > 0, `unterminated attribute ${attr}`);
      const raw = src.slice(pos + 1, end);
      assert.ok(!raw.includes('<'), `< in attribute ${attr}`);
      assert.ok(!(attr in node.attrs), `duplicate attribute ${attr} in <${name}>`);
      node.attrs[attr] = decodeEntities(raw, `${name}@${attr}`);
      pos = end + 1;
    }
    for (;;) {
      const lt = src.indexOf('<', pos);
      assert.ok(lt >= 0, `<${name}> is not closed`);
      const text = src.slice(pos, lt);
      assert.ok(!text.includes('>') || !text.includes(']]>'), 'stray ]]>');
      node.text += decodeEntities(text, `text of ${name}`);
      pos = lt;
      if (src.startsWith('</', pos)) {
        pos += 2;
        const close = NAME.exec(src.slice(pos))?.[0];
        assert.equal(close, name, `</${String(close)}> closes <${name}>`);
        pos += name.length;
        skipWs();
        assert.equal(src[pos], '>', 'bad end tag');
        pos++;
        return node;
      }
      node.children.push(parseElement());
    }
  };
  skipWs();
  const root = parseElement();
  skipWs();
  assert.equal(pos, src.length, 'content after the root element');
  return root;
}

export function kids(node: XNode, name: string): XNode[] {
  return node.children.filter((c) => c.name === name);
}

export function kid(node: XNode, name: string): XNode {
  const found = kids(node, name);
  assert.equal(found.length, 1, `expected one <${name}> in <${node.name}>, found ${found.length}`);
  return found[0] as XNode;
}

export function b64(value: string | undefined): string {
  return Buffer.from(value ?? '', 'base64').toString('utf8');
}

// --------------------------------------------------- PS3.15 A.5.1 structure (element order, required parts)

function checkCoded(node: XNode): void {
  for (const a of ['csd-code', 'codeSystemName', 'originalText']) {
    assert.ok(node.attrs[a], `<${node.name}> lacks ${a}`);
  }
}

/** Checks an AuditMessage against the A.5.1 schema's structure; returns the parsed tree. */
export function checkAuditMessage(xml: string): XNode {
  assert.ok(!/[\r\n]/.test(xml), 'a message is one line');
  const root = parseXml(xml);
  assert.equal(root.name, 'AuditMessage');
  const order = root.children.map((c) => c.name).join(' ') + ' ';
  assert.match(
    order,
    /^EventIdentification (ActiveParticipant )+AuditSourceIdentification (ParticipantObjectIdentification )*$/,
    `AuditMessage children out of order: ${order}`,
  );

  const ev = kid(root, 'EventIdentification');
  assert.match(ev.attrs['EventDateTime'] ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
  assert.ok(['0', '4', '8', '12'].includes(ev.attrs['EventOutcomeIndicator'] ?? ''));
  if (ev.attrs['EventActionCode'] !== undefined) assert.match(ev.attrs['EventActionCode'], /^[CRUDE]$/);
  const evOrder = ev.children.map((c) => c.name).join(' ') + ' ';
  assert.match(
    evOrder,
    /^EventID (EventTypeCode )*(EventOutcomeDescription )?$/,
    `EventIdentification: ${evOrder}`,
  );
  for (const c of ev.children) if (c.name !== 'EventOutcomeDescription') checkCoded(c);

  for (const ap of kids(root, 'ActiveParticipant')) {
    assert.ok(ap.attrs['UserID'] !== undefined && ap.attrs['UserID'] !== '', 'UserID is mandatory');
    assert.match(ap.attrs['UserIsRequestor'] ?? '', /^(true|false)$/);
    if (ap.attrs['NetworkAccessPointTypeCode'] !== undefined) {
      assert.match(ap.attrs['NetworkAccessPointTypeCode'], /^[1-5]$/);
      assert.ok(ap.attrs['NetworkAccessPointID'], 'type code without NetworkAccessPointID');
    }
    if (ap.attrs['AlternativeUserID']?.startsWith('AETITLES')) {
      assert.match(ap.attrs['AlternativeUserID'], /^AETITLES=[^;]+(;[^;]+)*$/); // A.5.2.2
    }
    for (const c of ap.children) {
      assert.equal(c.name, 'RoleIDCode');
      checkCoded(c);
    }
  }

  const src = kid(root, 'AuditSourceIdentification');
  assert.ok(src.attrs['AuditSourceID'], 'AuditSourceID is mandatory');
  for (const c of src.children) {
    assert.equal(c.name, 'AuditSourceTypeCode');
    assert.ok(c.attrs['csd-code']);
  }

  for (const po of kids(root, 'ParticipantObjectIdentification')) {
    assert.ok(po.attrs['ParticipantObjectID'] !== undefined, 'ParticipantObjectID is mandatory');
    const poOrder = po.children.map((c) => c.name).join(' ') + ' ';
    assert.match(
      poOrder,
      /^ParticipantObjectIDTypeCode (ParticipantObjectName |ParticipantObjectQuery )(ParticipantObjectDetail )*(ParticipantObjectDescription )*$/,
      `ParticipantObjectIdentification: ${poOrder}`,
    );
    checkCoded(kid(po, 'ParticipantObjectIDTypeCode'));
    for (const d of kids(po, 'ParticipantObjectDetail')) {
      assert.ok(d.attrs['type']);
      assert.match(d.attrs['value'] ?? '', /^[A-Za-z0-9+/]*={0,2}$/, 'ValuePair value is base64Binary');
    }
    for (const desc of kids(po, 'ParticipantObjectDescription')) {
      const descOrder = desc.children.map((c) => c.name).join(' ') + ' ';
      assert.match(
        descOrder,
        /^(MPPS )*(Accession )*(SOPClass )*$/,
        `ParticipantObjectDescription: ${descOrder}`,
      );
      for (const a of kids(desc, 'Accession')) assert.ok(a.attrs['Number'], 'Accession@Number is mandatory');
      for (const sop of kids(desc, 'SOPClass')) {
        assert.match(sop.attrs['NumberOfInstances'] ?? '', /^\d+$/);
        for (const inst of sop.children) {
          assert.equal(inst.name, 'Instance');
          assert.ok(inst.attrs['UID']);
        }
      }
    }
  }
  return root;
}

export function code(node: XNode): string {
  return node.attrs['csd-code'] ?? '';
}

export function roles(root: XNode): string[][] {
  return kids(root, 'ActiveParticipant').map((ap) => kids(ap, 'RoleIDCode').map(code));
}

function objectsOfType(root: XNode, idType: string): XNode[] {
  return kids(root, 'ParticipantObjectIdentification').filter(
    (o) => code(kid(o, 'ParticipantObjectIDTypeCode')) === idType,
  );
}

/** The SOP Class participant objects (110181). */
export function sopClassObjectsOf(root: XNode): XNode[] {
  return objectsOfType(root, '110181');
}

/** [ParticipantObjectID, ParticipantObjectName] of each Patient object (1 person, 1 patient, RFC-3881 2). */
export function patientsOf(root: XNode): [string, string][] {
  return objectsOfType(root, '2').map((o) => {
    assert.equal(o.attrs['ParticipantObjectTypeCode'], '1');
    assert.equal(o.attrs['ParticipantObjectTypeCodeRole'], '1');
    assert.equal(kid(o, 'ParticipantObjectIDTypeCode').attrs['codeSystemName'], 'RFC-3881');
    return [o.attrs['ParticipantObjectID'] ?? '', kid(o, 'ParticipantObjectName').text];
  });
}

export interface StudyObject {
  uid: string;
  accessions: string[];
  /** [SOP Class UID, NumberOfInstances, Instance UIDs]. */
  sopClasses: [string, number, string[]][];
}

/** The Study participant objects (2 system, 3 report, 110180). */
export function studiesOf(root: XNode): StudyObject[] {
  return objectsOfType(root, '110180').map((o) => {
    assert.equal(o.attrs['ParticipantObjectTypeCode'], '2');
    assert.equal(o.attrs['ParticipantObjectTypeCodeRole'], '3');
    const desc = kids(o, 'ParticipantObjectDescription')[0];
    return {
      uid: o.attrs['ParticipantObjectID'] ?? '',
      accessions: desc ? kids(desc, 'Accession').map((a) => a.attrs['Number'] ?? '') : [],
      sopClasses: desc
        ? kids(desc, 'SOPClass').map((c): [string, number, string[]] => [
            c.attrs['UID'] ?? '',
            Number(c.attrs['NumberOfInstances']),
            kids(c, 'Instance').map((i) => i.attrs['UID'] ?? ''),
          ])
        : [],
    };
  });
}
