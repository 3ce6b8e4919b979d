//! Elastic tabstops as Go's `text/tabwriter` does them, so tables and describe output line
//! up exactly like kubectl's.
//!
//! Cells are tab-terminated; the text after a line's last tab is not part of any column.
//! A column block is a run of consecutive lines that have a cell in that column, and every
//! cell of a block is padded to the block's widest cell plus `padding` (at least `min_width`).

/// Table settings of `kubectl get` (`printers.GetNewTabWriter`).
pub const KUBECTL_GET: (usize, usize) = (6, 3);
/// Settings of `kubectl describe` (`tabbedString`).
pub const KUBECTL_DESCRIBE: (usize, usize) = (0, 2);
/// Settings of `docker images`.
pub const DOCKER: (usize, usize) = (10, 3);

/// Aligns the tab-separated `text` with `(min_width, padding)` settings.
pub fn align(text: &str, (min_width, padding): (usize, usize)) -> String {
    let lines: Vec<Vec<&str>> = text
        .split_inclusive('\n')
        .map(|l| l.strip_suffix('\n').unwrap_or(l).split('\t').collect())
        .collect();
    let mut writer = Writer {
        lines: &lines,
        min_width,
        padding,
        widths: Vec::new(),
        out: String::with_capacity(text.len() * 2),
    };
    writer.format(0, lines.len());
    if !text.ends_with('\n') && writer.out.ends_with('\n') {
        writer.out.pop();
    }
    writer.out
}

struct Writer<'a> {
    lines: &'a [Vec<&'a str>],
    min_width: usize,
    padding: usize,
    widths: Vec<usize>,
    out: String,
}

fn width(cell: &str) -> usize {
    cell.chars().count()
}

impl Writer<'_> {
    /// Go's `Writer.format`: finds the column blocks of column `widths.len()` among
    /// lines `line0..line1` and recurses into each with its width fixed.
    fn format(&mut self, mut line0: usize, line1: usize) {
        let column = self.widths.len();
        let mut this = line0;
        while this < line1 {
            if column + 1 >= self.lines[this].len() {
                this += 1;
                continue;
            }
            self.write_lines(line0, this);
            line0 = this;
            let mut w = self.min_width;
            while this < line1 && column + 1 < self.lines[this].len() {
                w = w.max(width(self.lines[this][column]) + self.padding);
                this += 1;
            }
            self.widths.push(w);
            self.format(line0, this);
            self.widths.pop();
            line0 = this;
        }
        self.write_lines(line0, line1);
    }

    fn write_lines(&mut self, line0: usize, line1: usize) {
        for line in &self.lines[line0..line1] {
            for (j, cell) in line.iter().enumerate() {
                self.out.push_str(cell);
                if let Some(&w) = self.widths.get(j)
                    && j + 1 < line.len()
                {
                    let pad = w.saturating_sub(width(cell));
                    self.out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            self.out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_get_table() {
        let text = "NAME\tREADY\tSTATUS\tRESTARTS\tAGE\nnginx\t1/1\tRunning\t0\t5m\n";
        assert_eq!(
            align(text, KUBECTL_GET),
            "NAME    READY   STATUS    RESTARTS   AGE\n\
             nginx   1/1     Running   0          5m\n"
        );
    }

    #[test]
    fn blocks_break_on_lines_without_the_column() {
        let text = "Name:\tweb\nNamespace:\tdefault\nContainers:\n  app:\n    Image:\tbusybox\n    Restart Count:\t0\n";
        assert_eq!(
            align(text, KUBECTL_DESCRIBE),
            "Name:       web\n\
             Namespace:  default\n\
             Containers:\n  \
             app:\n    \
             Image:          busybox\n    \
             Restart Count:  0\n"
        );
    }

    #[test]
    fn trailing_cell_is_not_padded_and_unicode_counts_chars() {
        assert_eq!(align("é\tx\nab\ty", (0, 1)), "é  x\nab y");
    }
}
