// The spread of several `npm run bench` runs, as a Markdown table: for each
// row with a goal or a reference, each run's figure (ratio, MiB over bare
// node, or value; "(0.70× Node)": against the Node ceiling) and whether its
// goal was met, then the range.
//
//   node dist-bench/bench/spread.js bench-results/bench-A.json bench-results/bench-B.json ...
import fs from 'node:fs';
import type { Row } from './report.js';

interface Run {
  file: string;
  startedAt: string;
  othersCpu?: number;
  phases: Row[];
}

/** The figure a row is judged by, as printed in the table. */
function figure(r: Row): { value: number; text: string } | undefined {
  if (r.ratio !== undefined) return { value: r.ratio, text: `${r.ratio.toFixed(2)}×${r.ceilingRatio === undefined ? '' : ` (${r.ceilingRatio.toFixed(2)}× Node)`}` };
  if (r.overMiB !== undefined) return { value: r.overMiB, text: `${r.overMiB >= 0 ? '+' : ''}${r.overMiB.toFixed(1)} MiB` };
  if (r.target?.metric === 'p50Ms' && r.p50Ms !== undefined) return { value: r.p50Ms, text: `${r.p50Ms.toFixed(1)} ms` };
  if (r.value !== undefined && r.target) return { value: r.value, text: `${r.value.toFixed(1)}${r.unit ? ' ' + r.unit : ''}` };
  return undefined;
}

export function spread(runs: Run[]): string {
  const ids: string[] = [];
  for (const run of runs) for (const r of run.phases) if (!ids.includes(r.id) && figure(r) !== undefined) ids.push(r.id);
  const head = ['row', ...runs.map((_, i) => `run ${i + 1}`), 'range', 'goal', 'met'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const id of ids) {
    const rows = runs.map((run) => run.phases.find((r) => r.id === id));
    const figs = rows.map((r) => (r ? figure(r) : undefined));
    const values = figs.flatMap((f) => (f ? [f.value] : []));
    const any = rows.find((r) => r !== undefined)!;
    const goal = any.target ? `${any.target.text}${any.ref && any.target.metric === 'ratio' ? ` ${any.ref}` : ''}` : (any.ref ? `(against ${any.ref})` : '');
    const met = any.target ? `${rows.filter((r) => r?.result === 'met').length}/${rows.filter((r) => r?.result === 'met' || r?.result === 'missed').length}` : '';
    const fmt = (v: number): string => (figs.find((f) => f?.value === v)?.text ?? String(v));
    const range = values.length ? `${fmt(Math.min(...values))} – ${fmt(Math.max(...values))}` : '';
    lines.push(`| ${[any.name, ...figs.map((f) => f?.text ?? '—'), range, goal, met].join(' | ')} |`);
  }
  const others = runs.map((r, i) => `run ${i + 1}: ${r.startedAt}, other processes ${r.othersCpu?.toFixed(2) ?? '?'} CPU`).join('; ');
  return `${lines.join('\n')}\n\n${others}\n`;
}

/* c8 ignore start */
if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\//, '/'))) {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    process.stderr.write('usage: node dist-bench/bench/spread.js RUN.json...\n');
    process.exit(2);
  }
  process.stdout.write(spread(files.map((file) => ({ file, ...(JSON.parse(fs.readFileSync(file, 'utf8')) as Omit<Run, 'file'>) }))));
}
/* c8 ignore stop */
