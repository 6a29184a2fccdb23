//! Dates and times as the TUI shows them, from Unix milliseconds and a fixed UTC offset.
//! No time zone database: the caller says the offset (the TUI never reads the clock itself).

const DAY_MS: i64 = 86_400_000;
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A moment seen from one UTC offset.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Local {
    ms: i64,
}

impl Local {
    pub(crate) fn new(unix_ms: u64, offset_minutes: i32) -> Self {
        let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX / 2) + i64::from(offset_minutes) * 60_000;
        Local { ms }
    }

    /// Days since 1970-01-01 in local time.
    pub(crate) fn day(self) -> i64 {
        self.ms.div_euclid(DAY_MS)
    }

    /// "14:05".
    pub(crate) fn hhmm(self) -> String {
        let minutes = self.ms.rem_euclid(DAY_MS) / 60_000;
        format!("{:02}:{:02}", minutes / 60, minutes % 60)
    }
}

/// (year, month 1-12, day 1-31) of a day number since 1970-01-01.
pub(crate) fn civil(days: i64) -> (i64, usize, i64) {
    let (y, m, d) = tamizdat_wire::civil::date_from_days(days);
    (y, usize::try_from(m).unwrap_or(1), i64::from(d))
}

fn weekday(days: i64) -> &'static str {
    WEEKDAYS[usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0)]
}

fn month(m: usize) -> &'static str {
    MONTHS[m.clamp(1, 12) - 1]
}

/// The day separator's text: "Today", "Yesterday", or "Monday 3 March 2025".
pub(crate) fn day_label(day: i64, today: i64) -> String {
    match today - day {
        0 => "Today".to_owned(),
        1 => "Yesterday".to_owned(),
        _ => {
            let (y, m, d) = civil(day);
            format!("{} {d} {} {y}", weekday(day), month(m))
        }
    }
}

/// The conversation list's short time: "14:05" today, "Mon" this week, "3 Mar" this year,
/// "3 Mar 2024" before.
pub(crate) fn short(at: Local, now: Local) -> String {
    let (day, today) = (at.day(), now.day());
    if day == today {
        return at.hhmm();
    }
    if (1..7).contains(&(today - day)) {
        return weekday(day)[..3].to_owned();
    }
    let (y, m, d) = civil(day);
    let (this_year, _, _) = civil(today);
    let mon = &month(m)[..3];
    if y == this_year { format!("{d} {mon}") } else { format!("{d} {mon} {y}") }
}

/// A duration, roughly: "45s", "5m", "3h", "2d", "1w".
pub(crate) fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        86_400..604_800 => format!("{}d", secs / 86_400),
        _ => format!("{}w", secs / 604_800),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_000), (2022, 1, 8));
        assert_eq!(civil(-1), (1969, 12, 31));
        // 2025-03-03 12:30 UTC is a Monday.
        let t = Local::new(1_741_005_000_000, 0);
        assert_eq!(t.hhmm(), "12:30");
        assert_eq!(day_label(t.day(), t.day() + 3), "Monday 3 March 2025");
        assert_eq!(Local::new(1_741_005_000_000, 150).hhmm(), "15:00");
        assert_eq!(Local::new(1_741_005_000_000, -780).hhmm(), "23:30");
        assert_eq!(short(t, Local::new(1_741_005_000_000 + 2 * 86_400_000, 0)), "Mon");
        assert_eq!(short(t, Local::new(1_741_005_000_000 + 30 * 86_400_000, 0)), "3 Mar");
        assert_eq!(span(90), "1m");
        assert_eq!(span(86_400), "1d");
    }
}
