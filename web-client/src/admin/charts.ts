// One chart of the admin view: a metric of the last hour as a uPlot line chart (drawn on a
// canvas), with the newest value beside its title. uPlot is the only file's concern here; what
// it plots comes from model.ts. The chart's figure carries the plotted numbers as `data-*`
// attributes (`data-points`, `data-latest`, `data-peak`) for the browser tests.
import uPlot from 'uplot'
import 'uplot/dist/uPlot.min.css'
import type { AdminSample } from '../api/types'
import { h } from '../ui/dom'
import { type ChartSpec, chartData, isolated, latest, peak, timeWindow, valueRange } from './model'

const HEIGHT_PX = 150
/** Until the chart has been laid out and measured. */
const FALLBACK_WIDTH_PX = 320
/** style.css's --accent, and the same at 12% for the area under the line. */
const LINE_COLOUR = '#4f46e5'
const FILL_COLOUR = 'rgb(79 70 229 / 12%)'
const AXIS_COLOUR = '#64748b'
const GRID_COLOUR = '#e2e8f0'

export class Chart {
  readonly el: HTMLElement
  private readonly host: HTMLElement
  private readonly now: HTMLElement
  private plot: uPlot | null = null
  private xRange: [number, number] = [0, 1]
  private yRange: [number, number] = [0, 1]

  constructor(private readonly spec: ChartSpec) {
    this.now = h('span', { class: 'chart-now' }, '–')
    this.host = h('div', { class: 'chart-plot' })
    this.el = h(
      'figure',
      { class: 'chart', 'data-metric': spec.metric, 'data-points': 0 },
      h('figcaption', {}, h('span', { class: 'chart-title' }, spec.title), this.now),
      this.host
    )
    new ResizeObserver(() => this.resize()).observe(this.host)
  }

  /** Draws `points` (oldest first); `nowMs` places the hour when there are none yet. */
  show(points: AdminSample[], nowMs: number): void {
    const data = chartData(points, this.spec.metric)
    const [times, values] = data
    const top = peak(values)
    const last = latest(values)
    this.xRange = timeWindow(times, nowMs)
    this.yRange = valueRange(top)
    this.now.textContent = last === null ? '–' : this.spec.format(last)
    this.el.dataset.points = String(times.length)
    this.el.dataset.latest = last === null ? '' : String(last)
    this.el.dataset.peak = top === null ? '' : String(top)
    if (this.plot === null) this.plot = new uPlot(this.options(), data, this.host)
    else this.plot.setData(data)
  }

  private options(): uPlot.Options {
    const axis: uPlot.Axis = {
      stroke: AXIS_COLOUR,
      grid: { stroke: GRID_COLOUR, width: 1 },
      ticks: { stroke: GRID_COLOUR, width: 1 }
    }
    return {
      width: this.host.clientWidth || FALLBACK_WIDTH_PX,
      height: HEIGHT_PX,
      // The ranges are worked out in `show`; uPlot asks for them on every redraw.
      scales: {
        x: { time: true, range: () => this.xRange },
        y: { range: () => this.yRange }
      },
      axes: [axis, { ...axis, size: 48 }],
      series: [
        {},
        {
          label: this.spec.title,
          stroke: LINE_COLOUR,
          fill: FILL_COLOUR,
          width: 2,
          spanGaps: false,
          // A value between two gaps (a lone commit) would not show on a line: draw it as a
          // dot. When uPlot shows every point anyway (few of them), it draws them all.
          points: {
            size: 5,
            fill: LINE_COLOUR,
            filter: (plot, seriesIdx, show) => (show ? null : isolated(plot.data[seriesIdx] ?? []))
          },
          value: (_plot, value) => (value == null ? '–' : this.spec.format(value))
        }
      ],
      cursor: { drag: { x: false, y: false } }
    }
  }

  private resize(): void {
    const width = this.host.clientWidth
    if (this.plot !== null && width > 0 && width !== this.plot.width) {
      this.plot.setSize({ width, height: HEIGHT_PX })
    }
  }
}
