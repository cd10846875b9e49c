//! The newest few lines of a message list (the warnings shown under the app's views): older
//! lines drop off as new ones come, so a message repeated for hours holds no more memory.

use std::collections::VecDeque;

pub struct RecentLines {
    lines: VecDeque<String>,
    capacity: usize,
}

impl RecentLines {
    pub fn new(capacity: usize) -> RecentLines {
        RecentLines {
            lines: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, line: String) {
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    pub fn clear(&mut self) {
        self.lines.clear();
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.lines.iter()
    }
}

impl Extend<String> for RecentLines {
    fn extend<I: IntoIterator<Item = String>>(&mut self, lines: I) {
        for line in lines {
            self.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_lines_are_kept() {
        let mut lines = RecentLines::new(5);
        lines.extend((0..10_000).map(|i| format!("capture: camera 0 was disconnected ({i})")));
        assert_eq!(lines.len(), 5);
        let kept: Vec<&String> = lines.iter().collect();
        assert!(kept[0].ends_with("(9995)") && kept[4].ends_with("(9999)"));
        lines.push("one more".into());
        assert_eq!(lines.iter().last().map(String::as_str), Some("one more"));
        assert_eq!(lines.len(), 5);
        lines.clear();
        assert!(lines.is_empty());
    }
}
